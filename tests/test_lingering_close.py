"""Lingering close (`hook/linger.py`) with a real `komm-policy serve` process on loopback:
a client still sending a large body when it is answered early (413, 401, the body
budget's 503) reads the whole JSON answer instead of a connection reset, a client that
never stops sending is cut at the bound, and SIGTERM is not held up by a lingering
connection."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from komm_policy.hook.server import ServerLimits

from .serverproc import Deployment, ServerProcess
from .test_connections import read_response

MiB = 1024 * 1024
TOKEN = "linger-token"
BODY = 20 * MiB
HEAD = b"POST /mta-hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
LINGER = ServerLimits().linger_timeout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(Deployment(tmp_path_factory.mktemp("linger")), "--no-watch",
                       "--max-body-buffer-bytes", str(3 * MiB // 2),
                       KOMM_TOKEN=TOKEN, KOMM_MAX_BODY_BYTES=str(MiB)) as running:
        yield running


def send_then_read(port: int, head: bytes, size: int) -> tuple[int, dict[str, str], bytes]:
    """Send `head` and `size` body bytes at full speed, as a simple client does (the whole
    request, then the answer); raises what the socket raises (ECONNRESET, EPIPE)."""
    chunk = b"{" * MiB
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for _ in range(size // MiB):
            sock.sendall(chunk)
        return read_response(sock, 10)


@pytest.mark.parametrize(("head", "status"), [
    (HEAD + AUTH + b"Content-Length: %d\r\n\r\n" % BODY, 413),
    (HEAD + AUTH + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % BODY, 413),
    (HEAD + b"Authorization: Bearer wrong\r\nContent-Length: %d\r\n\r\n" % BODY, 401),
], ids=["413 content-length", "413 chunked", "401"])
def test_a_client_sending_a_large_body_reads_the_early_answer(
        server: ServerProcess, head: bytes, status: int) -> None:
    for _ in range(3):  # a reset is a race: without lingering most tries lose it
        got, headers, body = send_then_read(server.port, head, BODY)
        assert got == status, (got, body)
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]


def test_a_client_over_the_body_budget_reads_its_503(server: ServerProcess) -> None:
    size = MiB - 200  # under max_body_bytes; two of them do not fit the budget
    declared = HEAD + AUTH + b"Content-Length: %d\r\n\r\n" % size
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as first:
        first.sendall(declared)  # holds its declared length of the budget
        time.sleep(0.2)
        for _ in range(3):
            got, headers, body = send_then_read(server.port, declared, 8 * MiB)
            assert got == 503, body
            assert headers["retry-after"] == "1"
            assert "max_body_buffer_bytes" in json.loads(body)["error"]


def keep_sending(sock: socket.socket, stop: threading.Event, sent: list[int]) -> None:
    chunk = b"{" * 65536
    try:
        while not stop.is_set():
            sent[0] += sock.send(chunk)
    except OSError:
        pass


def test_a_client_that_never_stops_sending_is_cut_at_the_bound(
        server: ServerProcess) -> None:
    stop = threading.Event()
    sent = [0]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(HEAD + AUTH + b"Content-Length: %d\r\n\r\n" % (10 * 1024 * MiB))
        started = time.monotonic()
        sender = threading.Thread(target=keep_sending, args=(sock, stop, sent), daemon=True)
        sender.start()
        sender.join(LINGER + 5)
        elapsed = time.monotonic() - started
        stop.set()
        assert not sender.is_alive(), "the server still reads after the lingering bound"
        assert elapsed < LINGER + 3, elapsed
        assert sent[0] > MiB  # it was sending all along, not refused at once


def test_sigterm_is_not_held_up_by_a_lingering_connection(tmp_path) -> None:
    """The lingering connection ends within its bound; the process exits well before
    `shutdown_timeout` would have forced it."""
    stop = threading.Event()
    sent = [0]
    running = ServerProcess(Deployment(tmp_path), "--no-watch", "--shutdown-timeout", "10",
                            KOMM_TOKEN=TOKEN, KOMM_MAX_BODY_BYTES=str(MiB)).start()
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(HEAD + AUTH + b"Content-Length: %d\r\n\r\n" % (10 * 1024 * MiB))
            sender = threading.Thread(target=keep_sending, args=(sock, stop, sent),
                                      daemon=True)
            sender.start()
            while sent[0] < 4 * MiB:  # past max_body_bytes: answered, now lingering
                time.sleep(0.01)
            started = time.monotonic()
            running.signal(signal.SIGTERM)
            assert running.proc is not None
            running.proc.wait(timeout=LINGER + 5)
            elapsed = time.monotonic() - started
            stop.set()
            assert elapsed < LINGER + 1.5, elapsed
    finally:
        stop.set()
        running.stop()
