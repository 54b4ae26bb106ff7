"""`message.headers` has a count limit (`[server] max_message_headers`, default
wire.MAX_MESSAGE_HEADERS), checked before the entries are decoded: the tester sent 2.2M
headers `["a",""]` (20 MB) and the server grew by 333 MB; four 60 MB bodies took 2.3 GB and
the busy server answered others 408.  Now such a body is a 400 naming the field, decoded in
memory about its own size."""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from pathlib import Path

import httpx
import pytest

from komm_policy.config import ConfigError, load_config
from komm_policy.wire import MAX_MESSAGE_HEADERS, RequestError, decode_request

from .serverproc import Deployment, ServerProcess

ENVELOPE = {"context": {"stage": "data", "client": {"ip": "192.0.2.1"}},
            "envelope": {"from": {"address": "a@b.example"},
                         "to": [{"address": "c@d.example"}]}}


def data_body(headers: str, extra: str = "") -> str:
    """A data-stage request whose `message` is `{"headers": [HEADERS]EXTRA}`."""
    return (json.dumps(ENVELOPE)[:-1] + ',"message":{"headers":[' + headers + "]"
            + extra + ',"contents":"body"}}')


def tiny(count: int) -> str:
    return ",".join(['["a",""]'] * count)


@pytest.mark.parametrize("count", [MAX_MESSAGE_HEADERS + 1, 3 * MAX_MESSAGE_HEADERS,
                                   200_000])
def test_more_headers_than_the_limit_is_a_400_naming_the_field(count: int) -> None:
    with pytest.raises(RequestError) as caught:
        decode_request(data_body(tiny(count)))
    assert caught.value.path == "$.message.headers"
    assert str(MAX_MESSAGE_HEADERS) in caught.value.message


def test_server_headers_are_counted_too() -> None:
    body = data_body("", ',"serverHeaders":[' + tiny(MAX_MESSAGE_HEADERS + 1) + "]")
    with pytest.raises(RequestError) as caught:
        decode_request(body)
    assert caught.value.path == "$.message.serverHeaders"


def test_the_limit_is_inclusive_and_brackets_in_values_do_not_count() -> None:
    """Exactly the limit decodes, whichever way it is counted: values full of `[` (so the
    body's `[` count passes any quick bound) and escaped quotes before them."""
    entry = json.dumps(["X-List", ' [a] [b] "[c]" \\[\r\n'])
    request = decode_request(data_body(",".join([entry] * MAX_MESSAGE_HEADERS)))
    assert request.message is not None
    assert len(request.message.headers) == MAX_MESSAGE_HEADERS
    assert request.message.headers[0] == ("X-List", ' [a] [b] "[c]" \\[\r\n')
    with pytest.raises(RequestError):
        decode_request(data_body(",".join([entry] * (MAX_MESSAGE_HEADERS + 1))))


def test_a_smaller_limit_is_the_callers() -> None:
    body = data_body(tiny(11))
    assert len(decode_request(body, 11).message.headers) == 11  # type: ignore[union-attr]
    with pytest.raises(RequestError):
        decode_request(body, 10)


def test_a_header_list_given_twice_counts_its_last_occurrence_without_decoding_the_first(
) -> None:
    body = data_body(tiny(300_000), ',"headers":[["Subject"," hi\\r\\n"]]')
    request = decode_request(body)
    assert request.message is not None
    assert request.message.headers == (("Subject", " hi\r\n"),)


def test_a_bad_entry_is_named_by_its_path_in_the_list() -> None:
    body = data_body(",".join([tiny(2 * MAX_MESSAGE_HEADERS), '["a",5]']))
    with pytest.raises(RequestError) as caught:
        decode_request(body, 10 * MAX_MESSAGE_HEADERS)
    assert caught.value.path == f"$.message.headers[{2 * MAX_MESSAGE_HEADERS}][1]"


@pytest.mark.parametrize("count", [200_000, MAX_MESSAGE_HEADERS])
def test_memory_while_decoding_stays_about_the_body_size(count: int) -> None:
    """Before: about 15 bytes of Python objects per byte of such a body."""
    body = data_body(tiny(count)).encode()
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) if count > MAX_MESSAGE_HEADERS else (
                contextlib.nullcontext()):
            decode_request(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(body) + 400 * MAX_MESSAGE_HEADERS


def test_the_option_is_read_and_checked(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "10-rules.policy").write_text("stage connect { default accept }\n")
    env = {"KOMM_POLICIES": str(policies), "KOMM_DIRECTORY": "memory:demo"}
    assert load_config(env=env).max_message_headers == MAX_MESSAGE_HEADERS
    assert load_config(env={**env, "KOMM_MAX_MESSAGE_HEADERS": "50"}).max_message_headers \
        == 50
    for bad in ("0", "2000000"):
        with pytest.raises(ConfigError) as caught:
            load_config(env={**env, "KOMM_MAX_MESSAGE_HEADERS": bad})
        assert "KOMM_MAX_MESSAGE_HEADERS: " in str(caught.value), caught.value  # its source


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_real_server_refuses_many_headers_in_memory_about_the_body(tmp_path: Path) -> None:
    """The tester's body scaled down (1M headers, 9 MB; before: about +150 MB of RSS) and
    the option set lower from the environment; the server keeps answering."""
    with ServerProcess(Deployment(tmp_path), "--no-watch",
                       KOMM_MAX_MESSAGE_HEADERS="20") as server:
        assert server.proc is not None
        body = data_body(tiny(1_000_000)).encode()
        before = _peak_rss_kib(server.proc.pid)
        response = httpx.post(f"{server.url}/mta-hook", content=body, timeout=30)
        grown = _peak_rss_kib(server.proc.pid) - before
        assert response.status_code == 400
        assert response.json()["path"] == "$.message.headers"
        assert "more than 20 header fields" in response.json()["error"]
        assert grown * 1024 < 4 * len(body), grown
        few = server.post(data_body(tiny(20)))
        assert few.status_code == 200
        assert server.post(data_body(tiny(21))).status_code == 400
