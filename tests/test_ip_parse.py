"""`IP.parse` and `IP.valid` against a plain reference: `inet_pton` for the address, the
text as `ipaddress` writes it (RFC 5952 for IPv6, IPv4-mapped addresses as IPv4)."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import example, given, settings
from hypothesis import strategies as st

from komm_policy.ipset import IP


def reference(text: str) -> tuple[str, int, int] | None:
    """(text, version, value) the slow, obvious way, or None for no address."""
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            value = int.from_bytes(socket.inet_pton(family, text), "big")
        except (OSError, ValueError):
            continue
        if version == 6 and value >> 32 == 0xFFFF:
            version, value = 4, value & 0xFFFFFFFF
        address = (ipaddress.IPv6Address(value) if version == 6
                   else ipaddress.IPv4Address(value))
        return str(address), version, value
    return None


_fields = st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x10, 0xABCD]) | st.integers(0, 0xFFFF),
                   min_size=8, max_size=8)


def _spellings(fields: list[int]) -> st.SearchStrategy[str]:
    value = int.from_bytes(b"".join(f.to_bytes(2, "big") for f in fields), "big")
    address = ipaddress.IPv6Address(value)
    return st.sampled_from([str(address), address.exploded, str(address).upper(),
                            ":".join(f"{f:x}" for f in fields),
                            f"::ffff:{ipaddress.IPv4Address(value & 0xFFFFFFFF)}",
                            str(ipaddress.IPv4Address(value & 0xFFFFFFFF))])


_texts = (_fields.flatmap(_spellings)
          | st.text("0123456789abcdefABCDEF:.", max_size=45)
          | st.text("0123456789:.%x \x00\u0663", max_size=20))


@settings(max_examples=2000, deadline=None)
@given(_texts)
@example("::")
@example("0:0:0:0:0:0:0:0")
@example("::1.2.3.4")
@example("1.2.3.04")
@example("1.2.3.4\x00")
@example("fe80::1%eth0")
def test_parse_and_valid_equal_the_reference(text: str) -> None:
    expected = reference(text)
    ip = IP.parse(text)
    assert IP.valid(text) is (expected is not None)
    if expected is None:
        assert ip is None
    else:
        assert ip is not None
        assert (ip.text, ip.version, ip.value) == expected
