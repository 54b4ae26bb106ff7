"""Half-closed sockets against a real `komm-policy serve` process: a client that sends
its requests and then shuts down its sending side (FIN) gets every complete request
answered, in order, then the connection closes; a request cut short by the FIN is never
answered and the connection closes at once (no timeout to wait for)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from .serverproc import Deployment, ServerProcess
from .test_connections import REJECTED, SEED, connect, hook_request

TIMEOUT = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    deployment = Deployment(tmp_path_factory.mktemp("half-close"))
    # Timeouts far above the bounds below, so "closed at once" is told from "closed at a
    # timeout" however loaded the machine is.
    with ServerProcess(deployment, "--no-watch", "--body-timeout", str(TIMEOUT),
                       "--header-timeout", str(TIMEOUT)) as running:
        yield running


def send_then_half_close(port: int, data: bytes) -> tuple[bytes, float]:
    """Send `data`, shut down writing, read until the server closes; (bytes, seconds)."""
    with connect(port) as sock:
        started = time.monotonic()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(TIMEOUT + 10)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
        return received, time.monotonic() - started


def answers(data: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each whole response in `data`, in order."""
    found = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, f"a truncated response: {data[:80]!r}"
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                      if line.lower().startswith("content-length:"))
        assert len(rest) >= length, "a truncated body"
        found.append((int(lines[0].split()[1]), rest[:length]))
        data = rest[length:]
    return found


def test_pipelined_hook_requests_then_fin_are_all_answered(server: ServerProcess) -> None:
    count = 1500  # about 260 KB: more than one read, parsed a slice at a time
    received, elapsed = send_then_half_close(
        server.port, hook_request(SEED) * (count - 1) + hook_request(REJECTED))
    got = answers(received)
    assert len(got) == count
    assert got[:-1] == [(200, b'{"action":"accept"}')] * (count - 1)
    assert json.loads(got[-1][1])["action"] == "reject"
    assert elapsed < TIMEOUT - 5  # closed after the last answer, not at a timeout


def test_pipelined_asgi_requests_then_fin_are_all_answered(server: ServerProcess) -> None:
    count = 400  # GET /healthz: 36 bytes each, queued behind the one in progress
    received, _ = send_then_half_close(
        server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * count)
    got = answers(received)
    assert len(got) == count
    assert {status for status, _ in got} == {200}


@pytest.mark.parametrize("cut", ["in the header", "in the body"])
def test_a_request_cut_by_the_fin_closes_at_once(server: ServerProcess, cut: str) -> None:
    request = hook_request(SEED)
    end = request.index(b"\r\n\r\n") - 5 if cut == "in the header" else len(request) - 5
    received, elapsed = send_then_half_close(server.port, hook_request(SEED) + request[:end])
    assert answers(received) == [(200, b'{"action":"accept"}')]
    assert elapsed < TIMEOUT - 10  # not the 30 s header or body timeout
