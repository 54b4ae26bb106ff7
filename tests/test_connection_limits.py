"""Hostile clients against a real `komm-policy serve` process, continued (issue 9 §4):
bodies that stall cannot take the concurrency slots; oversized and malformed requests
get one JSON 4xx answer, then the connection closes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .serverproc import Deployment, ServerProcess
from .test_connections import SEED, closed_by_peer, connect, hook_request, metric, read_response


@pytest.fixture()
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(tmp_path_factory.mktemp("limits"))


def stall_bodies(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send a header with Content-Length: 1000 and 10 bytes."""
    stalled = []
    for _ in range(count):
        sock = connect(port)
        sock.sendall(hook_request(b'{"context"', length=1000))
        stalled.append(sock)
    return stalled


def real_requests(port: int, count: int) -> list[tuple[int, bytes, float]]:
    def one(_: int) -> tuple[int, bytes, float]:
        started = time.monotonic()
        with connect(port) as sock:
            sock.sendall(hook_request())
            status, _headers, body = read_response(sock, 5)
            return status, body, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_stalled_bodies_do_not_take_the_concurrency_slots(deployment: Deployment) -> None:
    with ServerProcess(deployment, "--no-watch", "--max-concurrency", "20",
                       "--body-timeout", "30") as server:
        stalled = stall_bodies(server.port, 30)
        try:
            time.sleep(0.3)
            answers = real_requests(server.port, 10)
            assert [(status, body) for status, body, _ in answers] == [
                (200, b'{"action":"accept"}')] * 10
            slowest = max(elapsed for _, _, elapsed in answers)
            assert slowest < 1, f"slowest real request took {slowest:.2f} s"
            # Also the ASGI way (a body arriving after its header) is not shed.
            with connect(server.port) as sock:
                request = hook_request()
                split = request.index(b"\r\n\r\n") + 8
                sock.sendall(request[:split])
                time.sleep(0.1)
                sock.sendall(request[split:])
                assert read_response(sock, 5)[:3:2] == (200, b'{"action":"accept"}')
            assert metric(server, "komm_http_requests_shed_total") == 0
            assert metric(server, "komm_http_requests_in_progress") == 1  # /metrics itself
            for sock in stalled:  # still waiting, not answered
                sock.settimeout(0)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
        finally:
            for sock in stalled:
                sock.close()


def test_stalled_bodies_are_evicted_when_connections_run_short(
        deployment: Deployment) -> None:
    with ServerProcess(deployment, "--no-watch", "--max-connections", "20",
                       "--body-timeout", "30") as server:
        stalled = stall_bodies(server.port, 30)
        try:
            answers = real_requests(server.port, 10)
            assert [(status, body) for status, body, _ in answers] == [
                (200, b'{"action":"accept"}')] * 10
            assert max(elapsed for _, _, elapsed in answers) < 1
            assert metric(server, 'komm_http_connections_closed_total{reason="evicted"}') >= 10
            assert sum(closed_by_peer(sock, 0.05) for sock in stalled) >= 10
        finally:
            for sock in stalled:
                sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests below: each opens its own connections and closes them,
    and counts the metrics it checks from what they were before it."""
    deployment = Deployment(tmp_path_factory.mktemp("limits"))
    with ServerProcess(deployment, "--no-watch", "--body-timeout", "5",
                       KOMM_MAX_BODY_BYTES="1024") as running:
        yield running


def counted(server: ServerProcess, name: str) -> float:
    """A counter's value, 0 while it has not been exported yet (no labelled child)."""
    try:
        return metric(server, name)
    except AssertionError:
        return 0.0


def answers_until_closed(sock: socket.socket, request: bytes, timeout: float = 3,
                         idle: float | None = None
                         ) -> tuple[list[tuple[int, dict[str, str], bytes]], float]:
    """Send `request` (from a thread: the server may stop reading it) and read every
    answer until the server closes (or, with `idle`, until nothing came for that long
    after an answer); the answers and the seconds until then."""
    started = time.monotonic()
    sender = threading.Thread(target=_send_quietly, args=(sock, request), daemon=True)
    sender.start()
    answers = []
    while True:
        try:
            status, headers, body = read_response(
                sock, idle if answers and idle is not None else timeout)
        except ConnectionResetError:
            break
        except TimeoutError:
            if not answers or idle is None:
                raise
            break
        if status == 0:
            break
        answers.append((status, headers, body))
    return answers, time.monotonic() - started


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # closed by the server, as it should be
        sock.sendall(data)


HEADER = b"POST /mta-hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
OVERSIZED = {
    "2 MB header field": (HEADER + b"X-Big: " + b"a" * 2_000_000 + b"\r\n", 431),
    "20,000 header fields": (HEADER + b"X-A: b\r\n" * 20_000, 431),
    "101 header fields": (HEADER + b"X-A: b\r\n" * 98, 431),
    "17 KB of fields": (HEADER + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 200)
                                          for i in range(80)), 431),
    "100 KB request target": (HEADER.replace(b"/mta-hook", b"/mta-hook?" + b"a" * 100_000),
                              414),
}


@pytest.mark.parametrize("name", OVERSIZED)
def test_oversized_request_headers_get_one_json_answer_then_close(
        server: ServerProcess, name: str) -> None:
    head, expected = OVERSIZED[name]
    bad_requests = f'komm_hook_bad_requests_total{{status="{expected}"}}'
    before = counted(server, bad_requests)
    with connect(server.port) as sock:
        answers, elapsed = answers_until_closed(
            sock, head + b"Content-Length: %d\r\n\r\n" % len(SEED) + SEED)
    assert [status for status, _, _ in answers] == [expected]
    _, headers, body = answers[0]
    assert headers["content-type"] == "application/json"
    assert "exceeds" in json.loads(body)["error"] or "more than" in json.loads(body)["error"]
    assert elapsed < 2
    assert server.post(SEED).status_code == 200
    assert metric(server, bad_requests) == before + 1


def test_headers_within_the_limits_are_answered(server: ServerProcess) -> None:
    """A request near both limits (99 fields, 15 KB) is served: the limits leave
    Stalwart's requests (a handful of short fields) far inside."""
    head = HEADER + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 150) for i in range(95))
    assert len(head) < 16_000
    with connect(server.port) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(SEED) + SEED)
        assert read_response(sock, 5)[::2] == (200, b'{"action":"accept"}')


MALFORMED = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "Content-Length with Transfer-Encoding":
        HEADER + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": HEADER + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "bad chunk size after a good chunk":
        HEADER + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n",
    "control character in a field name":
        HEADER + b"X-B\x01d: 1\r\nContent-Length: 2\r\n\r\n{}",
    "control character in a field value":
        HEADER + b"X-Bad: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "unsupported upgrade (h2c)":
        HEADER + b"Connection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n{}",
    "websocket upgrade": b"GET /mta-hook HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    "bad HTTP version": b"POST /mta-hook HTTP/9.Z\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_requests_get_one_json_400_then_close(
        server: ServerProcess, name: str) -> None:
    with connect(server.port) as sock:
        answers, elapsed = answers_until_closed(sock, MALFORMED[name])
    assert [status for status, _, _ in answers] == [400], answers
    _, headers, body = answers[0]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]
    assert elapsed < 2
    assert server.post(SEED).status_code == 200


CHUNKED_OVER_LIMIT = (HEADER + b"Transfer-Encoding: chunked\r\n\r\n"
                      + b"%x\r\n" % 3000 + b"a" * 3000 + b"\r\n")


def test_an_answer_before_the_body_is_read_is_the_connections_last(
        server: ServerProcess) -> None:
    """A chunked body over max_body_bytes, left unfinished, gets 413 and nothing else (no
    408 at the body timeout), and the connection closes at once."""
    with connect(server.port) as sock:
        answers, elapsed = answers_until_closed(sock, CHUNKED_OVER_LIMIT, timeout=7)
    assert [status for status, _, _ in answers] == [413]
    assert "exceeds 1024 bytes" in json.loads(answers[0][2])["error"]
    assert elapsed < 2


def test_one_answer_per_request_after_a_413(server: ServerProcess) -> None:
    """The same, with the body finished and a request behind it: 413 for the first, and
    the second is either answered (when the body was read whole before the 413) or not
    read at all (connection closed); never a 408."""
    with connect(server.port) as sock:
        request = CHUNKED_OVER_LIMIT + b"0\r\n\r\n" + hook_request()
        answers, _ = answers_until_closed(sock, request, timeout=7, idle=1.5)
    assert answers[0][0] == 413
    assert [(status, body) for status, _, body in answers[1:]] in (
        [], [(200, b'{"action":"accept"}')])
