"""Follow-ups of the operator-tool rough edges (issue #14's family), each found by the
tester: stalwart-config URLs and timeouts, a fresh store's log lines, and more below."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import pytest

from komm_policy.decisionlog.mta_log import ensure_mta_log
from komm_policy.directory.sqlite import connect

from .test_cli import run

# -- stalwart-config ----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "reason"), [
    ("http://host:99999/mta-hook", "invalid port"),
    ("https://host:abc/mta-hook", "invalid port"),
    ("http://127.0.0.1:0/mta-hook", "invalid port"),
    ("http://exa mple/mta-hook", "spaces, control or non-ASCII"),
    ("http://host/mta hook", "spaces, control or non-ASCII"),
    ("http://host/\nmta-hook", "spaces, control or non-ASCII"),
    ("http://bücher.example/mta-hook", "non-ASCII"),
    ("http://[::1/mta-hook", "invalid IPv6"),
    ("http://[fe80::zz]/mta-hook", "invalid IPv6"),
    ("http://300.1.2.3/mta-hook", "invalid IPv4"),
    ("http://host_name/mta-hook", "invalid host name"),
    ("http://-host/mta-hook", "invalid host name"),
    ("http://user:pw@host/mta-hook", "credentials"),
    ("http://host/mta-hook#x", "fragment"),
])
def test_stalwart_config_refuses_a_malformed_url(capsys: pytest.CaptureFixture[str],
                                                 url: str, reason: str) -> None:
    code, out, err = run(capsys, "stalwart-config", "--url", url)
    assert (code, out) == (2, "")
    assert reason in err
    assert "Traceback" not in err


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:3002/mta-hook", "http://[::1]:3002/mta-hook",
    "https://hooks.internal.example:8443/mta-hook", "https://xn--bcher-kva.example/hook?x=1",
    "http://localhost/mta-hook",
])
def test_stalwart_config_accepts_a_wellformed_url(capsys: pytest.CaptureFixture[str],
                                                  url: str) -> None:
    code, out, _ = run(capsys, "stalwart-config", "--url", url)
    assert code == 0
    assert tomllib.loads(out)["session"]["hook"]["komm"]["url"] == url


def test_stalwart_config_timeout_is_in_the_form_each_version_parses(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Reference §8.1: 0.15 TOML `timeout` is a duration string (`timeout = "10s"`);
    §8.2: 0.16 `MtaHook.timeout` is a positive number of milliseconds, never "10s" (the
    public docs' example is wrong there)."""
    code, out, _ = run(capsys, "stalwart-config", "--timeout", "10s")
    assert code == 0
    assert tomllib.loads(out)["session"]["hook"]["komm"]["timeout"] == "10s"
    code, out, _ = run(capsys, "stalwart-config", "--timeout", "10s", "--format", "json")
    assert code == 0
    timeout = json.loads(out)["timeout"]
    assert type(timeout) is int and timeout == 10000


# -- db init ------------------------------------------------------------------------------


def test_a_fresh_store_logs_no_upgrade(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "fresh.sqlite3"
    code, out, err = run(capsys, "db", "init", "--path", str(path))
    assert code == 0
    conn = connect(path)
    ensure_mta_log(conn)  # what the log's writer does when it opens the store
    conn.close()
    code, out, err = run(capsys, "db", "init", "--demo", "--path", str(path))
    assert code == 0
    said = " ".join(r.getMessage() for r in caplog.records) + out + err
    assert "upgrad" not in said
