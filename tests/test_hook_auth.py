"""The token on a real server (issue 9 §5): status endpoints behind it on request, failed
authentications logged without the token and rate-limited, duplicate headers refused."""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Iterator

import httpx
import pytest

from komm_policy.hook.ratelog import RateLimitedLog

from .serverproc import Deployment, ServerProcess

TOKEN = "s3cret-token-value"
SEED = ('{"context":{"stage":"connect","client":{"ip":"127.0.0.1",'
        '"helo":"test.example.com"}}}')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    deployment = Deployment(tmp_path_factory.mktemp("auth"))
    with ServerProcess(deployment, "--no-watch", "--status-auth", KOMM_TOKEN=TOKEN) as running:
        yield running


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
def test_status_endpoints_need_the_token(server: ServerProcess, path: str) -> None:
    assert httpx.get(server.url + path, timeout=5).status_code == 401
    assert httpx.get(server.url + path, headers=bearer("wrong"), timeout=5).status_code == 401
    assert httpx.get(server.url + path, headers=bearer(), timeout=5).status_code == 200
    basic = base64.b64encode(f"stalwart:{TOKEN}".encode()).decode()
    assert httpx.get(server.url + path, headers={"authorization": f"Basic {basic}"},
                     timeout=5).status_code == 200


def test_liveness_stays_open(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200


def test_hook_needs_the_token(server: ServerProcess) -> None:
    assert server.post(SEED).status_code == 401
    assert server.post(SEED, headers=bearer()).status_code == 200


def raw_request(server: ServerProcess, head: str, body: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head_part, _, rest = data.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head_part.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    return int(head_part.split()[1]), rest
    raise AssertionError(f"no complete response: {data!r}")


@pytest.mark.parametrize("path", ["/mta-hook", "/metrics"])
def test_duplicate_authorization_headers_get_400(server: ServerProcess, path: str) -> None:
    method = "POST" if path == "/mta-hook" else "GET"
    body = SEED.encode() if method == "POST" else b""
    for second in (TOKEN, "other"):  # even when both are right: ambiguous is refused
        status, answer = raw_request(
            server, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    f"Authorization: Bearer {TOKEN}\r\nAuthorization: Bearer {second}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n", body)
        assert status == 400
        assert b"duplicate Authorization header" in answer


def test_failed_authentication_is_logged_without_the_token(server: ServerProcess) -> None:
    for _ in range(20):
        server.post(SEED, headers=bearer("wrong-" + TOKEN))
    output = server.output()
    refused = [line for line in output.splitlines()
               if "refused " in line and "invalid token" in line]
    assert refused, output
    assert len(refused) < 5  # rate-limited: 20 failures, a line or two
    assert "from 127.0.0.1:" in refused[0]
    assert TOKEN not in output


def _stepped_log() -> tuple[RateLimitedLog, list[float]]:
    """A rate-limited log (10 s) on a clock the test sets: `now[0] = seconds`."""
    now = [0.0]
    return RateLimitedLog(logging.getLogger("test.ratelog"), interval=10,
                          clock=lambda: now[0]), now


def test_rate_limited_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    limited, now = _stepped_log()
    with caplog.at_level(logging.WARNING, "test.ratelog"):
        for step in range(25):
            now[0] = step
            limited.warning("k", "failure %s", step)
        limited.warning("other", "another kind")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["failure 0", "failure 10 (9 more like this in the last 10 s)",
                        "failure 20 (9 more like this in the last 10 s)", "another kind"]


def test_rate_limited_exception_keeps_one_traceback_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    limited, now = _stepped_log()
    with caplog.at_level(logging.ERROR, "test.ratelog"):
        for step in range(12):
            now[0] = step
            try:
                raise ValueError(f"bad {step}")
            except ValueError:
                limited.exception("decode", "decoding failed")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "decoding failed"),
        (logging.ERROR, "decoding failed (9 more like this in the last 10 s)")]
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["bad 0", "bad 10"]
