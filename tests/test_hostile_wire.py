"""Hostile requests against a real `komm-policy serve` process: a megabyte of header or
HELO decides quickly, large requests do not hold up others, and no body gets a 500."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from komm_policy.wire import MAX_TEXT

from .serverproc import Deployment, ServerProcess

MB = 1 << 20

# A rule reading From and one with the issue's catastrophic pattern on the HELO, beside the
# shipped set (which reads Subject, X-Spam-Flag and X-BeenThere).
EXTRA_POLICY = """
stage ehlo {
    rule nested_helo:
        when client.helo matches /^(a+)+$/
        reject 550 5.7.1 "nested"
}

stage data {
    rule from_mark:
        when header("From") contains "zzz-never"
        continue
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    deployment = Deployment(tmp_path_factory.mktemp("hostile"))
    (deployment.policies / "40-hostile.policy").write_text(EXTRA_POLICY)
    with ServerProcess(deployment, "--no-watch") as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as c:
        yield c


def data_body(stalwart_fixtures: dict[str, bytes], headers=None, contents=None) -> bytes:
    body = json.loads(stalwart_fixtures["derived-data-1"])
    if headers is not None:
        body["message"]["headers"] = headers
    if contents is not None:
        body["message"]["contents"] = contents
    return json.dumps(body).encode()


def ehlo_body(stalwart_fixtures: dict[str, bytes], helo: str) -> bytes:
    body = json.loads(stalwart_fixtures["derived-ehlo-1"])
    body["context"]["client"]["helo"] = helo
    return json.dumps(body).encode()


def best_round_trip(client: httpx.Client, url: str, body: bytes, tries: int = 3):
    best, response = float("inf"), None
    for _ in range(tries):
        start = time.perf_counter()
        response = client.post(url, content=body)
        best = min(best, time.perf_counter() - start)
    return best, response


# Round trips include sending the megabyte over loopback.  The issue's target is 50 ms; the
# bound here leaves room for a loaded 2-core CI machine, while the old quadratic readers
# took 7-24 s.
ROUND_TRIP_BOUND = 1.0  # the 50 ms target itself is measured by the benchmark


@pytest.mark.parametrize("case", [
    "subject-words", "subject-half-issue", "subject-folds", "from-quotes",
    "from-quotes-and-word", "from-parens",
])
def test_a_megabyte_of_header_decides_quickly(server, client, stalwart_fixtures, case):
    value = {
        "subject-words": ("Subject", " " + "a " * (MB // 2)),
        "subject-half-issue": ("Subject", " " + "a " * 256_000),
        "subject-folds": ("Subject", " casino\r\n\t" + "a\r\n " * (MB // 4) + "bonus"),
        "from-quotes": ("From", " " + '"' * MB),
        "from-quotes-and-word": ("From", " =?utf-8?q?a?= " + '"' * MB),
        "from-parens": ("From", " =?utf-8?q?a?= " + "(" * MB),
    }[case]
    body = data_body(stalwart_fixtures, [list(value)])
    seconds, response = best_round_trip(client, f"{server.url}/mta-hook", body)
    assert response is not None and response.status_code == 200
    assert response.json()["action"] == "accept"
    assert seconds < ROUND_TRIP_BOUND, f"{case}: {seconds * 1000:.0f} ms"


def test_the_longest_helo_decides_quickly(server, client, stalwart_fixtures):
    """The ehlo rule's regex over the longest HELO the wire takes (MAX_TEXT: a backtracking
    engine needs 2**1024 steps here); a megabyte of HELO is refused before any rule."""
    body = ehlo_body(stalwart_fixtures, "a" * (MAX_TEXT - 1) + "!")
    seconds, response = best_round_trip(client, f"{server.url}/mta-hook", body)
    assert response.json() == {"action": "accept"}
    assert seconds < ROUND_TRIP_BOUND, f"{seconds * 1000:.0f} ms"
    seconds, response = best_round_trip(client, f"{server.url}/mta-hook",
                                        ehlo_body(stalwart_fixtures, "a" * MB + "!"))
    assert response.status_code == 400
    assert response.json()["path"] == "$.context.client.helo"
    assert seconds < ROUND_TRIP_BOUND, f"{seconds * 1000:.0f} ms"
    # the issue's doubling example, and the pattern still means what it says
    assert client.post(f"{server.url}/mta-hook",
                       content=ehlo_body(stalwart_fixtures, "a" * 26 + "!")).json() == {
        "action": "accept"}
    assert client.post(f"{server.url}/mta-hook",
                       content=ehlo_body(stalwart_fixtures, "a" * 26)).json()["action"] == (
        "reject")


def _healthz_latencies(server: ServerProcess, load: threading.Event, count: int) -> list[float]:
    latencies = []
    with httpx.Client(timeout=30) as health:
        while not load.is_set():
            time.sleep(0.01)
        for _ in range(count):
            start = time.perf_counter()
            assert health.get(f"{server.url}/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.005)
    return sorted(latencies)


def _send_until(server: ServerProcess, body: bytes, started: threading.Event,
                stop: threading.Event, statuses: list[int]) -> None:
    with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as sender:
        while not stop.is_set():
            started.set()
            statuses.append(sender.post(f"{server.url}/mta-hook", content=body).status_code)


@pytest.mark.parametrize(("size", "bound", "count"), [
    # The targets (p99 < 10 ms beside 1 MB requests, < 100 ms beside 10 MB) are measured by
    # the benchmark.  Here a systematic hold-up fails (work on the event loop that grows
    # with the body delays most probes: the 90th percentile moves); a few probes delayed by
    # the scheduler of a loaded CI machine do not (the 99th percentile gets 4x the bound:
    # it reached 37 ms beside 1 MB requests while four other test runs loaded the machine).
    (MB, 0.050, 200),
    (10 * MB, 0.300, 60),
])
def test_large_requests_do_not_hold_up_others(server, stalwart_fixtures, size, bound, count):
    body = data_body(stalwart_fixtures, [["Subject", " " + "a " * (MB // 2)]],
                     contents="x" * (size - MB // 2 * 3))
    started, stop, statuses = threading.Event(), threading.Event(), []
    sender = threading.Thread(target=_send_until, args=(server, body, started, stop, statuses))
    sender.start()
    try:
        latencies = _healthz_latencies(server, started, count)
    finally:
        stop.set()
        sender.join()
    p90, p99 = (latencies[int(len(latencies) * q) - 1] for q in (0.90, 0.99))
    assert statuses and set(statuses) == {200}
    shown = (f"/healthz p90 {p90 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max "
             f"{latencies[-1] * 1000:.1f} ms beside {size >> 20} MB requests")
    assert p90 < bound, shown
    assert p99 < 4 * bound, shown


# -- no 500s -------------------------------------------------------------------------

CONNECT = '{"context":{"stage":"connect","client":{"ip":"192.0.2.1"%s}}%s}'


def hostile_bodies() -> st.SearchStrategy[bytes]:
    depth = st.integers(min_value=1, max_value=5000)
    nested = st.one_of(
        depth.map(lambda n: CONNECT % ("", ',"x":' + "[" * n + "]" * n)),
        depth.map(lambda n: CONNECT % ("", ',"x":' + "[" * n)),               # unclosed
        depth.map(lambda n: CONNECT % ("", ',"x":' + '{"a":' * n + "1" + "}" * n)),
        depth.map(lambda n: '{"context":' * n),
    ).map(str.encode)
    numbers = st.one_of(
        st.integers(min_value=1, max_value=20_000).map(lambda n: "9" * n),
        st.integers(min_value=1, max_value=400).map(lambda n: f"1e{'9' * n}"),
        st.integers(min_value=1, max_value=400).map(lambda n: f"-0.{'0' * n}1"),
    ).flatmap(lambda number: st.sampled_from([
        CONNECT % (f',"port":{number}', ""),
        CONNECT % ("", f',"x":{number}'),
        CONNECT % (f',"activeConnections":{number}', ""),
    ])).map(str.encode)
    invalid_utf8 = st.binary(min_size=1, max_size=8).filter(_not_utf8).map(
        lambda raw: b'{"context":{"stage":"ehlo","client":{"ip":"192.0.2.1","helo":"' + raw
        + b'"}}}')
    duplicates = st.sampled_from([
        CONNECT % (',"ip":"198.51.100.1"', ""),
        '{"context":{"stage":"connect","client":{"ip":"192.0.2.1"}},'
        '"context":{"stage":"ehlo","client":{"ip":"192.0.2.2"}}}',
        CONNECT % (',"port":1,"port":"x"', ""),
    ]).map(str.encode)
    return st.one_of(nested, numbers, invalid_utf8, duplicates, st.binary(max_size=64))


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=hostile_bodies())
def test_no_body_gets_a_500(server, client, body):
    response = client.post(f"{server.url}/mta-hook", content=body)
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert ("action" in answer) if response.status_code == 200 else ("error" in answer)


def _bad_requests(client: httpx.Client, server: ServerProcess) -> float:
    text = client.get(f"{server.url}/metrics").text
    match = re.search(r'^komm_hook_bad_requests_total\{status="400"\} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(("body", "status", "error"), [
    (CONNECT % ("", ',"x":' + "[" * 1000 + "]" * 1000), 400, "nested too deeply"),
    (CONNECT % ("", ',"x":' + "[" * 100_000), 400, "nested too deeply"),
    (CONNECT % (',"port":' + "9" * 5000, ""), 400, "out of range"),
    ((CONNECT % (',"helo":"\xff"', "")).encode("latin-1"), 400, "UTF-8"),
])
def test_the_issue_examples_get_a_4xx_and_are_counted(server, client, body, status, error):
    before = _bad_requests(client, server)
    response = client.post(f"{server.url}/mta-hook", content=body)
    assert response.status_code == status
    assert error in response.json()["error"]
    assert _bad_requests(client, server) == before + 1


@pytest.mark.parametrize(("body", "expected"), [
    # numbers in fields komm-policy does not know are skipped, whatever their size
    (CONNECT % ("", ',"x":' + "9" * 5000), {"action": "accept"}),
    (CONNECT % ("", ',"x":1e999999'), {"action": "accept"}),
    # a key given twice: the last one counts (192.0.2.66 is blocked in the demo data)
    (CONNECT % (',"ip":"192.0.2.66"', ""), "reject"),
    ('{"context":{"stage":"connect","client":{"ip":"192.0.2.66"}},'
     '"context":{"stage":"connect","client":{"ip":"192.0.2.1"}}}', {"action": "accept"}),
])
def test_documented_outcomes(server, client, body, expected):
    answer = client.post(f"{server.url}/mta-hook", content=body).json()
    assert (answer["action"] if isinstance(expected, str) else answer) == expected


@pytest.mark.parametrize("field", ["client", "server"])
def test_a_nul_in_an_ip_is_a_named_400_without_a_traceback(server, client, field):
    """breaker3 #3: `1.2.3.4\\u0000` raised ValueError past the IP parser: a vague
    "unreadable request: ValueError" and a 15-line traceback in the log per request."""
    context = {"stage": "connect", "client": {"ip": "192.0.2.1"}}
    context[field] = {"ip": "1.2.3.4\u0000"}
    body = json.dumps({"context": context})
    before = server.output().count("Traceback")
    for _ in range(5):
        response = client.post(f"{server.url}/mta-hook", content=body)
        assert response.status_code == 400
        answer = response.json()
        assert answer["path"] == f"$.context.{field}.ip", answer
        assert "not an IP address" in answer["error"], answer
    assert server.output().count("Traceback") == before
