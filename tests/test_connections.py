"""Hostile and broken clients against a real `komm-policy serve` process (issue 9 §4):
stalled headers, short bodies, idle keep-alive, too many connections and requests, and a
SIGTERM while a slow client holds a request.  Timeouts are short here to keep the suite
fast; the defaults are documented in the README."""

from __future__ import annotations

import concurrent.futures
import json
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from .serverproc import Deployment, ServerProcess

SEED = (b'{"context":{"stage":"connect","client":{"ip":"127.0.0.1",'
        b'"helo":"test.example.com"}}}')
HEADER_TIMEOUT = 1.5
STALLED = 1100
DESCRIPTORS = 1024


def hook_request(body: bytes = SEED, length: int | None = None) -> bytes:
    return (b"POST /mta-hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length)) + body


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, headers, body); b"" body and status 0 if closed."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


@pytest.fixture()
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(tmp_path_factory.mktemp("connections"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that take it: each closes its own connections and
    counts the metrics it checks from what they were before it."""
    deployment = Deployment(tmp_path_factory.mktemp("connections"))
    with ServerProcess(deployment, "--no-watch", "--header-timeout", str(HEADER_TIMEOUT),
                       "--body-timeout", "1", "--idle-timeout", "1",
                       "--max-concurrency", "2") as running:
        yield running


def metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported")


def counted(server: ServerProcess, name: str) -> float:
    """A counter's value, 0 while it has not been exported yet (no labelled child)."""
    try:
        return metric(server, name)
    except AssertionError:
        return 0.0


# The timers' lower bounds are exact (nothing answers early on a loaded machine); the
# upper ones are generous, as a loaded machine may run a due timer late: the answer's
# error and the reason counted say which timer fired.
LATE = 3.0


def test_stalled_headers_cannot_starve_real_requests(deployment: Deployment) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < STALLED + 200:
        pytest.skip(f"the test itself needs {STALLED + 200} descriptors; the hard limit is "
                    f"{hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, STALLED + 200), hard))

    def limit_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))

    process = ServerProcess(deployment, "--no-watch", "--header-timeout", str(HEADER_TIMEOUT))
    process.preexec_fn = limit_descriptors
    stalled: list[socket.socket] = []
    with process as server:
        try:
            for _ in range(STALLED):
                sock = socket.socket()
                sock.setblocking(False)
                try:
                    sock.connect_ex(("127.0.0.1", server.port))
                    stalled.append(sock)
                    time.sleep(0)
                    sock.send(b"POST /mta-hook HTTP/1.1\r\nHost: x\r\nContent-Le")
                except OSError:
                    pass  # evicted already, or not yet connected: it stays stalled
            started = time.monotonic()

            def real_request(_: int) -> tuple[int, bytes, float]:
                with connect(server.port) as sock:
                    sock.sendall(hook_request())
                    status, _headers, body = read_response(sock, HEADER_TIMEOUT + 5)
                    return status, body, time.monotonic() - started

            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                answers = list(pool.map(real_request, range(10)))
            assert [(status, body) for status, body, _ in answers] == [
                (200, b'{"action":"accept"}')] * 10
            slowest = max(elapsed for _, _, elapsed in answers)
            assert slowest < HEADER_TIMEOUT + LATE, f"slowest real request took {slowest:.2f} s"
            # The stalled connections were cut: evicted at the limit or timed out.
            time.sleep(HEADER_TIMEOUT + 0.5)
            evicted = metric(server, 'komm_http_connections_closed_total{reason="evicted"}')
            timed_out = metric(server,
                               'komm_http_connections_closed_total{reason="header_timeout"}')
            assert evicted > 0 and timed_out > 0
            assert metric(server, "komm_http_connections_open") <= DESCRIPTORS
            assert "connection limit" in server.output()
            assert "no complete request header" in server.output()
        finally:
            for sock in stalled:
                sock.close()


def test_partial_header_gets_408_at_the_header_timeout(server: ServerProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"POST /mta-hook HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        status, _, body = read_response(sock, HEADER_TIMEOUT + LATE + 2)
        elapsed = time.monotonic() - started
        assert status == 408
        assert "header" in json.loads(body)["error"]
        assert HEADER_TIMEOUT - 0.2 < elapsed < HEADER_TIMEOUT + LATE
        assert closed_by_peer(sock, 2)


def test_short_body_is_cut_off_at_the_body_timeout(server: ServerProcess) -> None:
    body_timeouts = 'komm_http_connections_closed_total{reason="body_timeout"}'
    before = counted(server, body_timeouts)
    with connect(server.port) as sock:
        sock.sendall(hook_request(SEED[:10], length=len(SEED)))
        started = time.monotonic()
        status, _, body = read_response(sock, 1 + LATE + 2)
        elapsed = time.monotonic() - started
        assert status == 408
        assert "body" in json.loads(body)["error"]
        assert 0.8 < elapsed < 1 + LATE
        assert closed_by_peer(sock, 2)
    assert metric(server, body_timeouts) == before + 1
    assert server.post(SEED).status_code == 200  # nothing else was disturbed


def test_idle_keepalive_connection_is_closed(server: ServerProcess) -> None:
    header_timeouts = 'komm_http_connections_closed_total{reason="header_timeout"}'
    before = counted(server, header_timeouts)
    with connect(server.port) as sock:
        sock.sendall(hook_request())
        assert read_response(sock, 5)[0] == 200
        started = time.monotonic()
        assert closed_by_peer(sock, 1 + LATE + 2)
        assert 0.8 < time.monotonic() - started < 1 + LATE
    # closed by the idle timer (1 s), not the header timer (1.5 s), which would count
    assert counted(server, header_timeouts) == before


def test_trickled_bytes_between_requests_do_not_hold_the_connection(
        server: ServerProcess) -> None:
    """Empty lines between requests are skipped by the parser and cancel uvicorn's
    keep-alive timer; the header timeout still applies to them."""
    with connect(server.port) as sock:
        sock.sendall(hook_request())
        assert read_response(sock, 5)[0] == 200
        started = time.monotonic()
        sock.settimeout(0.3)
        closed = False
        while time.monotonic() - started < HEADER_TIMEOUT + LATE + 2:
            try:
                sock.send(b"\r\n")
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed
        assert time.monotonic() - started < HEADER_TIMEOUT + LATE


def hold_answers(port: int) -> socket.socket:
    """A client that pipelines requests for large answers (`/metrics`) and never reads
    them: once the buffers are full, its request in progress waits to write its answer,
    and holds a concurrency slot."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
    sent = 0
    deadline = time.monotonic() + 2
    while sent < len(requests) and time.monotonic() < deadline:
        try:
            sent += sock.send(requests[sent:])
        except BlockingIOError:
            time.sleep(0.01)
    return sock


def test_requests_beyond_max_concurrency_get_a_fast_503(server: ServerProcess) -> None:
    """Two clients hold both slots (max_concurrency 2); a request then gets 503 at once.
    Every 503 the prober sees is counted, and nothing else is shed: the holders each
    have one request in progress at a time, and /metrics is read only once a hook
    request was answered 200 after they left (so the count is exact, however loaded
    the machine is: the prober waits for the slots to be taken instead of sleeping)."""
    shed_before = counted(server, "komm_http_requests_shed_total")
    holders = [hold_answers(server.port) for _ in range(2)]
    seen_503 = 0
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = server.post(SEED)
            if response.status_code == 503:
                seen_503 += 1
                assert time.monotonic() - started < LATE  # not queued behind the holders
                assert "busy" in response.json()["error"]
                assert response.headers["retry-after"] == "1"
                assert response.headers["connection"] == "close"
                break
            assert response.status_code == 200
            time.sleep(0.05)
        assert seen_503 == 1, "the holders never took both slots"
        for _ in range(3):  # still held: each further request is shed too
            assert server.post(SEED).status_code == 503
            seen_503 += 1
    finally:
        for sock in holders:
            sock.close()
    deadline = time.monotonic() + 5
    while server.post(SEED).status_code != 200:
        seen_503 += 1
        assert time.monotonic() < deadline, "the slots were not freed"
        time.sleep(0.05)
    assert metric(server, "komm_http_requests_shed_total") == shed_before + seen_503
    assert "max_concurrency" in server.output()


def test_sigterm_with_a_slow_client_is_bounded(deployment: Deployment) -> None:
    process = ServerProcess(deployment, "--no-watch", "--body-timeout", "60",
                            "--shutdown-timeout", "1")
    with process as server, connect(server.port) as sock:
        sock.sendall(hook_request(b"{", length=len(SEED)))
        time.sleep(0.3)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.proc is not None
        server.proc.wait(timeout=10)
        elapsed = time.monotonic() - started
        assert elapsed < 1 + 3, f"shutdown took {elapsed:.1f} s"
        status, _, body = read_response(sock, 1)
        assert status == 408
        assert "shutting down" in json.loads(body)["error"]
    assert "shutting down, and the request body is still incomplete" in server.output()
    assert "Exception in ASGI application" not in server.output()


REJECTED = b'{"context":{"stage":"ehlo","client":{"ip":"127.0.0.1","helo":"  "}}}'


def read_responses(sock: socket.socket, count: int, timeout: float
                   ) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` pipelined responses, which may arrive in one read."""
    sock.settimeout(timeout)
    data = b""
    answers = []
    while len(answers) < count:
        head, found, rest = data.partition(b"\r\n\r\n")
        if found:
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers["content-length"])
            if len(rest) >= length:
                answers.append((int(lines[0].split()[1]), headers, rest[:length]))
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, "closed before every answer arrived"
        data += chunk
    return answers


def test_inline_and_asgi_paths_answer_alike(server: ServerProcess) -> None:
    """A hook request whose body comes with its header is answered inline by the
    protocol; one whose body comes later, pipelined requests, HTTP/1.0 and a bad body
    take whichever path applies, and every answer is the same as through the app."""
    bad_requests = 'komm_hook_bad_requests_total{status="400"}'
    before = counted(server, bad_requests)
    expected = server.post(REJECTED)
    assert expected.status_code == 200 and expected.json()["action"] == "reject"
    with connect(server.port) as sock:
        sock.sendall(hook_request(REJECTED))  # inline
        status, headers, body = read_response(sock, 5)
        assert (status, json.loads(body)) == (200, expected.json())
        assert headers["content-type"] == "application/json" and "date" in headers
        request = hook_request(REJECTED)
        split = request.index(b"\r\n\r\n") + 4 + 5
        sock.sendall(request[:split])  # the body's rest comes in a later read: ASGI
        time.sleep(0.2)
        sock.sendall(request[split:])
        status, _, body = read_response(sock, 5)
        assert (status, json.loads(body)) == (200, expected.json())
        sock.sendall(hook_request(SEED) + hook_request(REJECTED) + hook_request(b"[1]"))
        answers = read_responses(sock, 3, 5)
        assert [(s, json.loads(b)) for s, _, b in answers[:2]] == [
            (200, {"action": "accept"}), (200, expected.json())]
        assert answers[2][0] == 400 and json.loads(answers[2][2])["error"]
    with connect(server.port) as sock:  # HTTP/1.0: answered, then closed
        sock.sendall(hook_request(SEED).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        status, headers, body = read_response(sock, 5)
        assert (status, body) == (200, b'{"action":"accept"}')
        assert headers.get("connection") == "close"
        assert closed_by_peer(sock, 2)
    assert metric(server, bad_requests) == before + 1


def test_pipelined_requests_are_all_answered_in_order(deployment: Deployment) -> None:
    """Thousands of requests pipelined on one connection before any answer is read (the
    inline path answers them as they are parsed; the server stops reading while its
    unsent answers are over the transport's high-water mark): each is answered, in
    order."""
    count = 5000
    requests = hook_request(SEED) * (count - 1) + hook_request(REJECTED)
    with ServerProcess(deployment, "--no-watch") as server, connect(server.port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(requests,), daemon=True)
        sender.start()
        time.sleep(0.5)
        answers = read_responses(sock, count, 60)
        sender.join(30)
    assert [(status, body) for status, _, body in answers[:-1]] == [
        (200, b'{"action":"accept"}')] * (count - 1)
    assert json.loads(answers[-1][2])["action"] == "reject"
