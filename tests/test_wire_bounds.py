"""Every field the request carries is bounded by its Stalwart type or a documented limit
(found by the tester: a port of 2**64 was decided, then could not be recorded, and a
500,000-character sender made a megabyte decision record).  Each case is a 400 naming the
field; the largest value inside each bound still decodes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from komm_policy.wire import MAX_RECIPIENTS, MAX_TEXT, RequestError, decode_request

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "stalwart" /
                      "derived-rcpt-2.json").read_text())


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(payload: dict) -> None:
        *parents, last = path.split(".")
        node = payload
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return mutate


def _decode(mutate: Callable[[dict], None]) -> None:
    payload = copy.deepcopy(FIXTURE)
    mutate(payload)
    decode_request(json.dumps(payload))


TOO_LARGE = {
    "context.stage": ["s" * (MAX_TEXT + 1), "s" * 3_000_000],
    "context.client.port": [2**64, 10**400, 65536, -5],
    "context.server.port": [70000, -1],
    "context.client.activeConnections": [2**32, -1],
    "context.protocol.version": [2**40, -1],
    "context.client.helo": ["h" * (MAX_TEXT + 1)],
    "context.client.ptr": ["p" * (MAX_TEXT + 1)],
    "context.sasl.login": ["l" * (MAX_TEXT + 1)],
    "envelope.from.address": ["a" * 500_000 + "@example.org"],
    "envelope.to": [[{"address": f"r{i}@example.org"} for i in range(MAX_RECIPIENTS + 1)]],
    "envelope.from.parameters": [{f"P{i}": "x" for i in range(65)}],
}


@pytest.mark.parametrize(("path", "value"), [
    (path, value) for path, values in TOO_LARGE.items() for value in values],
    ids=lambda v: v if isinstance(v, str) and "." in v else None)
def test_a_value_past_its_bound_is_a_400_naming_the_field(path: str, value: Any) -> None:
    with pytest.raises(RequestError) as caught:
        _decode(_set(path, value))
    assert caught.value.path == "$." + path


def test_a_message_size_is_a_non_negative_integer() -> None:
    data = copy.deepcopy(FIXTURE)
    data["context"]["stage"] = "data"
    data["message"] = {"headers": [], "contents": "", "size": -99999999999999999999}
    with pytest.raises(RequestError) as caught:
        decode_request(json.dumps(data))
    assert caught.value.path == "$.message.size"
    data["message"]["size"] = 2**63 - 1
    assert decode_request(json.dumps(data)).message.size == 2**63 - 1


@pytest.mark.parametrize(("path", "value"), [
    ("context.client.port", 65535),
    ("context.client.port", 0),
    ("context.client.helo", "h" * MAX_TEXT),
    ("envelope.from.address", "a" * (MAX_TEXT - 12) + "@example.org"),
    ("envelope.to", [{"address": f"r{i}@example.org"} for i in range(MAX_RECIPIENTS)]),
    ("envelope.from.address", "a\r\n250 ok\x00@b.example"),  # left to valid_address()
])
def test_the_largest_value_inside_each_bound_decodes(path: str, value: Any) -> None:
    _decode(_set(path, value))


def test_an_unknown_stage_is_echoed_at_most_max_text_long() -> None:
    """The 400 names an unknown stage; a 3 MB one was echoed whole (tester's finding)."""
    for stage in ("x" * MAX_TEXT, "\u00e9" * MAX_TEXT, "s" * 3_000_000):
        with pytest.raises(RequestError) as caught:
            _decode(_set("context.stage", stage))
        assert caught.value.path == "$.context.stage"
        assert len(caught.value.message) < 8 * MAX_TEXT


_CONNECT = b'{"context":{"stage":"connect","client":{"ip":"127.0.0.1"},"x":"%s"}}'


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", b"a\xc3"])
def test_invalid_utf8_in_an_unknown_field_is_a_400(bad: bytes) -> None:
    """msgspec checks the text it decodes, not what it skips: an unknown field's invalid
    UTF-8 was accepted (200) although the README promises 400 (tester's finding)."""
    with pytest.raises(RequestError) as caught:
        decode_request(_CONNECT % bad)
    assert "invalid UTF-8" in caught.value.message
    with pytest.raises(RequestError):  # in a key too
        decode_request(b'{"context":{"stage":"connect","client":{"ip":"127.0.0.1"},"'
                       + bad + b'":1}}')


def test_utf8_is_checked_across_slices_of_a_large_body() -> None:
    from komm_policy.wire_checks import UTF8_SLICE

    text = ("é€😀" * UTF8_SLICE).encode()  # characters of 2, 3, 4 bytes across slices
    assert decode_request(_CONNECT % text).context.stage == "connect"
    with pytest.raises(RequestError) as caught:
        decode_request(_CONNECT % (text + b"\xff"))
    assert "invalid UTF-8" in caught.value.message
    with pytest.raises(RequestError):  # cut inside the last character
        decode_request(_CONNECT % text[:-1])
