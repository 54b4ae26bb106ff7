"""Answers that end a connection say so (RFC 9112 §9.6): every answer a real
`komm-policy serve` process gives before it has read a request whole (the app's 401, 400,
413, 404 and 405 with the body unread; the protocol's 431, 414, 400 and 408) carries
`connection: close`, and the connection is then closed."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .serverproc import Deployment, ServerProcess
from .test_connections import SEED, connect, read_response

TOKEN = "early-answer-token"
HEAD = b"POST /mta-hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    deployment = Deployment(tmp_path_factory.mktemp("early"))
    with ServerProcess(deployment, "--no-watch", "--header-timeout", "1",
                       "--body-timeout", "1", KOMM_TOKEN=TOKEN,
                       KOMM_MAX_BODY_BYTES="1024") as running:
        yield running


# Each: what the client sends (and then nothing more), the status expected.
EARLY = {
    "401 missing token, body unsent": (HEAD + b"Content-Length: 100\r\n\r\n", 401),
    "401 wrong token, half the body sent":
        (HEAD + b"Authorization: Bearer wrong\r\nContent-Length: 100\r\n\r\n{\"context\"", 401),
    "400 duplicate Authorization, body unsent":
        (HEAD + AUTH + AUTH + b"Content-Length: 100\r\n\r\n", 400),
    "413 declared Content-Length over the limit": (
        HEAD + AUTH + b"Content-Length: 5000\r\n\r\n" + b"{" * 100, 413),
    "413 chunked body over the limit": (
        HEAD + AUTH + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 3000
        + b"a" * 3000 + b"\r\n", 413),
    "404 unknown path, body unsent": (
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n", 404),
    "404 /mta-hook/ with a slash, body unsent": (
        b"POST /mta-hook/ HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n", 404),
    "405 GET /mta-hook, body unsent": (
        b"GET /mta-hook HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n", 405),
    "431 header over max_header_bytes": (HEAD + b"X-Big: " + b"a" * 2_000_000 + b"\r\n", 431),
    "431 too many header fields": (HEAD + b"X-A: b\r\n" * 101, 431),
    "414 request target over max_header_bytes":
        (b"POST /mta-hook?" + b"a" * 2_000_000 + b" HTTP/1.1\r\n", 414),
    "400 malformed request line": (b"GARBAGE\r\n\r\n", 400),
    "400 bad chunk size": (HEAD + AUTH + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "400 protocol upgrade": (
        HEAD + b"Connection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n{}", 400),
    "408 header not finished": (b"POST /mta-hook HTTP/1.1\r\nHost", 408),
    "408 body not finished": (HEAD + AUTH + b"Content-Length: 100\r\n\r\n{", 408),
}


@pytest.mark.parametrize("name", EARLY)
def test_an_early_answer_says_connection_close_and_closes(
        server: ServerProcess, name: str) -> None:
    sent, expected = EARLY[name]
    with connect(server.port) as sock:
        sender = threading.Thread(target=_send_quietly, args=(sock, sent), daemon=True)
        sender.start()  # the server may stop reading before it has all of it
        started = time.monotonic()
        status, headers, body = read_response(sock, 5)
        assert status == expected, (status, body)
        assert headers.get("connection") == "close", headers
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]
        assert closed(sock, 2), "the connection stayed open after its last answer"
        assert time.monotonic() - started < 3
    # The service still answers a proper request.
    with connect(server.port) as sock:
        sock.sendall(HEAD + AUTH + b"Content-Length: %d\r\n\r\n" % len(SEED) + SEED)
        assert read_response(sock, 5)[::2] == (200, b'{"action":"accept"}')


def test_a_complete_request_refused_keeps_its_connection(server: ServerProcess) -> None:
    """A 401 for a request read whole does not end the connection (a sibling that
    must not close: the rule is about unread bodies, not about error statuses)."""
    with connect(server.port) as sock:
        sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(SEED) + SEED)
        status, headers, _ = read_response(sock, 5)
        assert status == 401 and "connection" not in headers
        sock.sendall(HEAD + AUTH + b"Content-Length: %d\r\n\r\n" % len(SEED) + SEED)
        assert read_response(sock, 5)[::2] == (200, b'{"action":"accept"}')


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes (EOF or reset) within `timeout` seconds."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False
