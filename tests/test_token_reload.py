"""SIGHUP re-reads the hook token file of a real `komm-policy serve` process: a new token
is in use for the next request; a missing or empty file keeps the token in use (never
no authentication) and logs an error."""

from __future__ import annotations

import signal
import time

import pytest

from .serverproc import Deployment, ServerProcess
from .test_connections import SEED


def status(server: ServerProcess, token: str | None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return server.post(SEED, headers=headers).status_code


def wait_for(condition: object, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_sighup_rereads_the_token_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    deployment = Deployment(tmp_path_factory.mktemp("token"))
    token_file = deployment.root / "token"
    token_file.write_text("first-token\n")
    with ServerProcess(deployment, "--no-watch", KOMM_TOKEN_FILE=str(token_file)) as server:
        assert status(server, "first-token") == 200
        assert status(server, "second-token") == 401

        token_file.write_text("second-token\n")
        assert status(server, "second-token") == 401  # not before the signal
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: status(server, "second-token") == 200)
        assert status(server, "first-token") == 401
        assert status(server, None) == 401
        assert "a new token is in use" in server.output()
        assert "second-token" not in server.output()  # never the secret itself

        for broken, reason in ((lambda: token_file.unlink(), "cannot be read"),
                               (lambda: token_file.write_text("  \n"), "is empty"),
                               (lambda: token_file.write_text("a\nb\n"), "holds 2 lines"),
                               (lambda: token_file.write_text("tökén\n", encoding="utf-8"),
                                "holds a non-ASCII character")):
            broken()
            server.signal(signal.SIGHUP)
            assert wait_for(lambda r=reason: r in server.output()), server.output()
            assert "keeping the token in use" in server.output()
            assert status(server, "second-token") == 200
            assert status(server, None) == 401
            assert status(server, "first-token") == 401

        token_file.write_text("third-token")
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: status(server, "third-token") == 200)
        assert status(server, "second-token") == 401


def test_a_token_given_outright_is_not_replaced_by_the_file(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """--token wins over KOMM_TOKEN_FILE at start, and a SIGHUP does not swap the file's
    token in behind it."""
    deployment = Deployment(tmp_path_factory.mktemp("token-flag"))
    token_file = deployment.root / "token"
    token_file.write_text("file-token")
    with ServerProcess(deployment, "--no-watch", "--token", "flag-token",
                       KOMM_TOKEN_FILE=str(token_file)) as server:
        assert status(server, "flag-token") == 200
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: "policies unchanged" in server.output())
        assert status(server, "flag-token") == 200
        assert status(server, "file-token") == 401
