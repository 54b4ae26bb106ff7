"""A request header over `max_header_bytes` gets 431 (RFC 6585 §5) with a JSON body and
`connection: close` at once, however it arrives: in one read or many, as one huge field
line or many small ones, finished or not, alone or behind a pipelined request — never a
408 after `header_timeout` (the tester's finding: a header over the limit within one read
was answered 408).  A header within the limit, in one read or many, and pipelined
requests read together, are answered as usual.  A real `komm-policy serve` process."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .serverproc import Deployment, ServerProcess
from .test_connections import SEED, connect, hook_request, read_response, read_responses
from .test_early_answers import closed

LIMIT = 4096
HEADER_TIMEOUT = 3.0
HEAD = b"POST /mta-hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    deployment = Deployment(tmp_path_factory.mktemp("header431"))
    with ServerProcess(deployment, "--no-watch", "--max-header-bytes", str(LIMIT),
                       "--header-timeout", str(HEADER_TIMEOUT)) as running:
        yield running


def fields(count: int, size: int) -> bytes:
    return b"".join(b"X-F%d: %s\r\n" % (i, b"v" * size) for i in range(count))


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# What the client sends (each item a separate send, 10 ms apart), then nothing more
# (the connection stays open, as a stalled client's would).
OVER = {
    "one read: an unfinished field line within one parse slice":
        [HEAD + b"X-Big: " + b"a" * 6_000],
    "one read: an unfinished field line over two parse slices":
        [HEAD + b"X-Big: " + b"a" * 11_000],
    "one read: one 2 MB field line": [HEAD + b"X-Big: " + b"a" * 2_000_000],
    "one read: one 2 MB field line, finished": [HEAD + b"X-Big: " + b"a" * 2_000_000 + b"\r\n"],
    "one read: many small fields, the block unfinished": [HEAD + fields(60, 100)],
    "one read: many small fields, the last one unfinished":
        [HEAD + fields(30, 100) + b"X-Last: " + b"v" * 2_000],
    "one read: the whole header, over the limit": [
        HEAD + fields(60, 100) + b"Content-Length: %d\r\n\r\n" % len(SEED) + SEED],
    "many reads: one field line": pieces(HEAD + b"X-Big: " + b"a" * 6_000, 300),
    "many reads: many small fields": pieces(HEAD + fields(60, 100), 300),
    "many reads: one field per read": [HEAD, *(b"X-F%d: %s\r\n" % (i, b"v" * 100)
                                               for i in range(60))],
    "one read each: header start, then a large unfinished line":
        [HEAD, b"X-Big: " + b"a" * 6_000],
}


def send_slowly(sock: socket.socket, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(0.01)
    except OSError:
        pass  # closed by the server, as it should be


def answer_to(server: ServerProcess, chunks: list[bytes]
              ) -> tuple[int, dict[str, str], bytes, float, socket.socket]:
    sock = connect(server.port)
    threading.Thread(target=send_slowly, args=(sock, chunks), daemon=True).start()
    started = time.monotonic()
    status, headers, body = read_response(sock, HEADER_TIMEOUT + 3)
    return status, headers, body, time.monotonic() - started, sock


@pytest.mark.parametrize("name", OVER)
def test_a_header_over_the_limit_gets_431_at_once(server: ServerProcess, name: str) -> None:
    status, headers, body, elapsed, sock = answer_to(server, OVER[name])
    with sock:
        assert status == 431, (status, body)
        assert headers["content-type"] == "application/json"
        assert headers.get("connection") == "close"
        assert json.loads(body) == {"error": f"request header exceeds {LIMIT} bytes"}
        assert elapsed < HEADER_TIMEOUT / 2, elapsed  # not waiting for the header timeout
        assert closed(sock, 2)
    assert server.post(SEED).status_code == 200


def test_a_pipelined_request_over_the_limit_gets_431_after_the_first_is_answered(
        server: ServerProcess) -> None:
    """Both in one read: the first request is answered, then the second's 431."""
    with connect(server.port) as sock:
        started = time.monotonic()
        sock.sendall(hook_request() + HEAD + b"X-Big: " + b"a" * 6_000)
        first, (status, headers, body) = read_responses(sock, 2, HEADER_TIMEOUT + 3)
        assert first[::2] == (200, b'{"action":"accept"}')
        assert status == 431, (status, body)
        assert headers.get("connection") == "close"
        assert time.monotonic() - started < HEADER_TIMEOUT / 2
        assert closed(sock, 2)


def test_the_request_target_over_the_limit_is_414(server: ServerProcess) -> None:
    """The sibling: an unfinished request line over the limit is 414 URI Too Long."""
    status, headers, body, elapsed, sock = answer_to(
        server, [b"POST /mta-hook?" + b"a" * 6_000])
    with sock:
        assert status == 414 and headers.get("connection") == "close", body
        assert elapsed < HEADER_TIMEOUT / 2


WITHIN = {
    "one read, just under the limit": [HEAD + fields(34, 100)],
    "many reads, just under the limit": pieces(HEAD + fields(34, 100), 300),
}


@pytest.mark.parametrize("name", WITHIN)
def test_a_header_within_the_limit_is_answered(server: ServerProcess, name: str) -> None:
    chunks = WITHIN[name]
    assert sum(map(len, chunks)) < LIMIT - 100
    chunks = [*chunks, b"Content-Length: %d\r\n\r\n" % len(SEED) + SEED]
    status, _, body, _, sock = answer_to(server, chunks)
    with sock:
        assert (status, body) == (200, b'{"action":"accept"}')


def test_pipelined_requests_read_together_are_each_within_the_limit(
        server: ServerProcess) -> None:
    """Four requests of about 2.5 KB of header each, in one read (10 KB, more than the
    limit together): each is its own header, so all four are answered."""
    one = HEAD + fields(20, 100) + b"Content-Length: %d\r\n\r\n" % len(SEED) + SEED
    assert LIMIT / 2 < len(one) < LIMIT
    with connect(server.port) as sock:
        sock.sendall(one * 4)
        answers = read_responses(sock, 4, 5)
        assert [a[::2] for a in answers] == [(200, b'{"action":"accept"}')] * 4
