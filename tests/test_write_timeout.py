"""Clients that send requests but never read the answers, against a real `komm-policy
serve` process: the server stops reading them once their answers fill its write buffer
(so its memory stays bounded however much they pipeline), serves everyone else
meanwhile, and cuts them after `write_timeout`, counted in
`komm_http_connections_closed{reason="write_timeout"}`."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from .serverproc import Deployment, ServerProcess
from .test_connections import SEED, connect, hook_request, metric, read_response

WRITE_TIMEOUT = 2.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def never_reader(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer, which this test never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def pipeline_until_blocked(socks: list[socket.socket], request: bytes,
                           seconds: float = 4.0) -> list[int]:
    """Send `request` over and over on every socket until each has been unable to send
    for 0.5 s (the server stopped reading it) or `seconds` passed; bytes sent on each."""
    burst = request * max(1, 65536 // len(request))
    sent = [0] * len(socks)
    blocked_since: list[float | None] = [None] * len(socks)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = time.monotonic()
        for i, sock in enumerate(socks):
            try:
                sent[i] += sock.send(burst)
                blocked_since[i] = None
            except BlockingIOError:
                blocked_since[i] = blocked_since[i] or now
        if all(since is not None and now - since > 0.5 for since in blocked_since):
            break
        time.sleep(0.005)
    return sent


def test_a_client_that_never_reads_is_bounded_and_cut(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Pipelined `GET /metrics` (about 35 bytes each, answered with several KB): the
    kernel's buffers fill after a few hundred answers, then the server's own.  Hook
    answers are small: the kernel's buffers (32 MB here) would take some 100,000 before
    the server's write buffer fills, too many for a test; the mechanism is the same."""
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    deployment = Deployment(tmp_path_factory.mktemp("write"))
    with ServerProcess(deployment, "--no-watch", "--write-timeout", str(WRITE_TIMEOUT)
                       ) as server:
        assert server.proc is not None
        metric(server, "komm_http_connections_open")  # warm: the first /metrics built
        assert server.post(SEED).status_code == 200
        before = rss_kib(server.proc.pid)
        hostile = [never_reader(server.port) for _ in range(4)]
        try:
            started = time.monotonic()
            sent = pipeline_until_blocked(hostile, request)
            # The server stopped reading each of them: what it took is bounded by the
            # kernel's socket buffers and its own (a few MB), not by the client.
            assert max(sent) < 24 * 1024 * 1024, sent
            grown = rss_kib(server.proc.pid) - before
            # Parsed a slice at a time, each connection queues a few requests, not the
            # thousands of a read (without the slices: about 7 MB per connection).
            assert grown < 8 * 1024, f"server RSS grew {grown} KiB"
            # Everyone else is answered meanwhile.
            with connect(server.port) as sock:
                sock.sendall(hook_request())
                assert read_response(sock, 2)[::2] == (200, b'{"action":"accept"}')
            # Cut after the write timeout, counted from when each stopped reading: on a
            # loaded machine the server may take a while to fill their buffers with
            # answers, so the deadline is generous (without the timeout: never cut).
            deadline = started + 30
            cut = 0.0
            while time.monotonic() < deadline:
                cut = metric(server, 'komm_http_connections_closed_total{reason="write_timeout"}')
                if cut == len(hostile):
                    break
                time.sleep(0.2)
            assert cut == len(hostile)
            assert metric(server, "komm_http_connections_open") == 1  # /metrics itself
            assert metric(server, "komm_http_requests_in_progress") == 1
            for sock in hostile:  # the server's end is gone: reset, or EOF after the data
                assert peer_gone(sock)
            assert "its answers left unread for 2.0 s" in server.output()
        finally:
            for sock in hostile:
                sock.close()
        assert server.post(SEED).status_code == 200


def peer_gone(sock: socket.socket) -> bool:
    sock.setblocking(True)
    sock.settimeout(2)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True
