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
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------------------
# The bounds are options (`[server] linger_timeout`, `linger_bytes`): a real server
# honours changed values, and the byte bound follows a raised `max_body_bytes`.


def slow_sender(sock: socket.socket, stop: threading.Event, sent: list[int]) -> None:
    """64 KiB every 10 ms (about 6 MB/s): far under any byte bound, so only time cuts."""
    chunk = b"{" * 65536
    try:
        while not stop.is_set():
            sent[0] += sock.send(chunk)
            time.sleep(0.01)
    except OSError:
        pass


def cut_after(port: int, sender: Any, limit: float) -> tuple[float, int]:
    """Seconds from a 413 (declared 10 GiB over a 1 MiB limit) to the reset of a client
    that keeps sending with `sender`, and the bytes it sent."""
    stop = threading.Event()
    sent = [0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(HEAD + AUTH + b"Content-Length: %d\r\n\r\n" % (10 * 1024 * MiB))
        started = time.monotonic()
        thread = threading.Thread(target=sender, args=(sock, stop, sent), daemon=True)
        thread.start()
        thread.join(limit)
        elapsed = time.monotonic() - started
        stop.set()
        assert not thread.is_alive(), f"still read after {limit} s"
    return elapsed, sent[0]


def test_a_changed_linger_timeout_is_honoured_from_the_flag(tmp_path: Path) -> None:
    """4 s from `--linger-timeout`: a slow client is still read at the default's 2 s and
    cut after 4 s (plus a margin for a loaded machine)."""
    with ServerProcess(Deployment(tmp_path), "--no-watch", "--linger-timeout", "4",
                       KOMM_TOKEN=TOKEN, KOMM_MAX_BODY_BYTES=str(MiB)) as running:
        elapsed, sent = cut_after(running.port, slow_sender, 4 + 6)
    assert 4 <= elapsed < 4 + 5, elapsed
    assert sent > MiB


def test_a_changed_linger_bytes_is_honoured_from_the_config_file(tmp_path: Path) -> None:
    """2 MiB from the TOML file (time bound 20 s from the environment): a client sending
    at full speed is cut after about 2 MiB and the socket buffers, not 64 MiB, long
    before the time bound."""
    config = tmp_path / "komm.toml"
    config.write_text("[server]\nlinger_bytes = 2097152\n")
    with ServerProcess(Deployment(tmp_path), "--no-watch", "--config", str(config),
                       KOMM_TOKEN=TOKEN, KOMM_MAX_BODY_BYTES=str(MiB),
                       KOMM_LINGER_TIMEOUT="20") as running:
        elapsed, sent = cut_after(running.port, keep_sending, 15)
    assert elapsed < 10, elapsed
    assert 2 * MiB <= sent < 32 * MiB, sent


def test_linger_timeout_0_closes_at_once(tmp_path: Path) -> None:
    with ServerProcess(Deployment(tmp_path), "--no-watch", KOMM_LINGER_TIMEOUT="0",
                       KOMM_TOKEN=TOKEN, KOMM_MAX_BODY_BYTES=str(MiB)) as running:
        elapsed, _ = cut_after(running.port, slow_sender, 5)
    assert elapsed < 1.5, elapsed


def test_the_byte_bound_follows_a_raised_body_limit(tmp_path: Path) -> None:
    """max_body_bytes 128 MiB and nothing else set: a 96 MiB body answered 401 at once
    (more than the old fixed 64 MiB bound) is read whole, and the client reads its 401."""
    with ServerProcess(Deployment(tmp_path), "--no-watch", "--linger-timeout", "20",
                       KOMM_TOKEN=TOKEN, KOMM_MAX_BODY_BYTES=str(128 * MiB)) as running:
        head = HEAD + b"Authorization: Bearer wrong\r\nContent-Length: %d\r\n\r\n" % (96 * MiB)
        status, headers, body = send_then_read(running.port, head, 96 * MiB)
    assert status == 401, body
    assert headers["connection"] == "close"
