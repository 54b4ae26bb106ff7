"""IP addresses and sets of addresses/networks with fast membership tests.

`ipaddress.ip_address` costs several microseconds per call, too much for the hook path, so
addresses are parsed with `socket.inet_pton` into an integer once per request.  A set of
networks is indexed by prefix length: membership is one mask and one set lookup per
distinct prefix length, however many entries the set holds (1,000 blocked IPs cost the
same as 10).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable

_V4_MAPPED_PREFIX = 0xFFFF << 32
_WIDTH = {4: 32, 6: 128}


class IP:
    """An IP address value: its canonical text, version and integer value.

    IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are treated as the IPv4 address, as
    Stalwart does for client addresses.
    """

    __slots__ = ("text", "value", "version")

    def __init__(self, text: str, version: int, value: int) -> None:
        self.text = text
        self.version = version
        self.value = value

    @classmethod
    def parse(cls, text: str) -> IP | None:
        """Parse text into an IP, or None when it is not an address.  `text` becomes the
        canonical form: dotted quad for IPv4 (also for IPv4-mapped IPv6), RFC 5952 for
        IPv6 (lower case, zeros compressed: `2001:db8:4860::1`)."""
        if ":" not in text:  # no IPv6 text lacks one, no IPv4 text has one
            try:
                packed = socket.inet_pton(socket.AF_INET, text)
            except (OSError, ValueError):  # ValueError: an embedded NUL (hostile input)
                return None
            return cls(socket.inet_ntoa(packed), 4, int.from_bytes(packed, "big"))
        try:
            packed = socket.inet_pton(socket.AF_INET6, text)
        except (OSError, ValueError):
            return None
        value = int.from_bytes(packed, "big")
        if value >> 32 == 0xFFFF:
            return cls(socket.inet_ntoa((value & 0xFFFFFFFF).to_bytes(4, "big")), 4,
                       value & 0xFFFFFFFF)
        return cls(_v6_text(packed), 6, value)

    @staticmethod
    def valid(text: str) -> bool:
        """Whether `parse(text)` gives an IP (the same test, without building one)."""
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        except (OSError, ValueError):
            return False
        return True

    @staticmethod
    def key(text: str) -> tuple[int, int] | None:
        """`(version, value)` of the IP `parse(text)` gives, or None when it gives none:
        the same test and the same IPv4-mapped rule, without writing the canonical text
        (half of `parse`'s cost; for comparing many candidate texts with one address)."""
        if ":" not in text:
            try:
                return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
            except (OSError, ValueError):
                return None
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        except (OSError, ValueError):
            return None
        if value >> 32 == 0xFFFF:
            return 4, value & 0xFFFFFFFF
        return 6, value

    @classmethod
    def from_address(cls, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IP:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return cls(str(address), address.version, int(address))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"IP({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, IP) and self.value == other.value and self.version == other.version
        )

    def __hash__(self) -> int:
        return hash((self.version, self.value))


_FIELDS = struct.Struct("!8H")
_FRAMED = ":" + "{:x}:" * 8
_ZERO_RUNS = tuple(":0" * n + ":" for n in range(8, 1, -1))
"""Runs of zero fields in `:`-framed IPv6 text, longest first (RFC 5952 §4.2: never one)."""


def _v6_text(packed: bytes) -> str:
    """The RFC 5952 §4 text of a packed IPv6 address, as `ipaddress.IPv6Address` gives it
    (lower-case hex without leading zeros, the longest run of two or more zero fields
    compressed to `::`, the first of equal runs) in a fraction of its time."""
    framed = _FRAMED.format(*_FIELDS.unpack(packed))
    for run in _ZERO_RUNS:
        at = framed.find(run)  # a field is 0 only between two colons
        if at >= 0:
            return f"{framed[1:at]}::{framed[at + len(run):-1]}"
    return framed[1:-1]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_network(network: Network) -> Network:
    """Map an IPv4-mapped IPv6 network onto the IPv4 network it denotes."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        base = int(network.network_address)
        if base & ~((1 << 32) - 1) == _V4_MAPPED_PREFIX:
            v4 = ipaddress.IPv4Address(base & 0xFFFFFFFF)
            return ipaddress.IPv4Network(f"{v4}/{network.prefixlen - 96}")
    return network


class IPSet:
    """An immutable set of addresses and networks; `ip in ipset` is a network match."""

    __slots__ = ("_exact", "_prefixes", "size")

    def __init__(self, entries: Iterable[IP | Network | ipaddress.IPv4Address
                                          | ipaddress.IPv6Address]) -> None:
        exact: set[tuple[int, int]] = set()
        by_prefix: dict[tuple[int, int], set[int]] = {}
        count = 0
        for entry in entries:
            count += 1
            if isinstance(entry, IP):
                exact.add((entry.version, entry.value))
                continue
            if isinstance(entry, ipaddress.IPv4Address | ipaddress.IPv6Address):
                ip = IP.from_address(entry)
                exact.add((ip.version, ip.value))
                continue
            network = normalize_network(entry)
            width = _WIDTH[network.version]
            if network.prefixlen == width:
                exact.add((network.version, int(network.network_address)))
                continue
            key = (network.version, network.prefixlen)
            by_prefix.setdefault(key, set()).add(int(network.network_address))
        self._exact = frozenset(exact)
        # Longest prefixes first: the most specific match is found first.
        self._prefixes = tuple(
            (version, ((1 << _WIDTH[version]) - 1) ^ ((1 << (_WIDTH[version] - plen)) - 1),
             frozenset(nets))
            for (version, plen), nets in sorted(by_prefix.items(), key=lambda kv: -kv[0][1])
        )
        self.size = count

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, IP):
            return False
        version = ip.version
        value = ip.value
        if (version, value) in self._exact:
            return True
        for net_version, mask, nets in self._prefixes:
            if net_version == version and value & mask in nets:
                return True
        return False

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"IPSet({self.size} entries)"


def parse_entry(text: str) -> IP | Network:
    """Parse a directory entry: an address or a CIDR network (host bits allowed)."""
    text = text.strip()
    if "/" in text:
        return normalize_network(ipaddress.ip_network(text, strict=False))
    ip = IP.parse(text)
    if ip is None:
        raise ValueError(f"not an IP address or network: {text!r}")
    return ip
