"""Rough edges a new operator hit (issue 14 §4), each kept fixed: one configured directory
for eval and serve, CLI messages without Python internals, help on every option,
`--version`, aligned `eval --explain` output, and the service's own reports (degraded
readiness, unchanged reloads, shadow mode and worker versions at start-up)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from komm_policy.cli import build_parser, main, version
from komm_policy.config import Config
from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.sqlite import create_database

from .conftest import POLICIES, ROOT
from .serverproc import Deployment, ServerProcess
from .test_cli import run, usage_error
from .test_hook_e2e import wait_for

FIXTURES = ROOT / "tests" / "fixtures" / "stalwart"
INTERNALS = re.compile(r"\[Errno \d+\]|Traceback|_command\b|\bdb_command\b|invalid literal"
                       r"|could not convert")


# ---------------------------------------------------------------------------------------
# eval and serve: one configured directory


def test_eval_defaults_to_the_directory_serve_uses(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no store here: the default names it and how to get one
    for variable in ("KOMM_DIRECTORY", "KOMM_CONFIG", "KOMM_POLICIES"):
        monkeypatch.delenv(variable, raising=False)
    code, out, err = run(capsys, "eval", str(FIXTURES / "derived-rcpt-1.json"),
                         "--policies", str(POLICIES))
    assert code == 2 and out == ""
    default_store = Config().directory.removeprefix("sqlite:")
    assert f"[directory] url (default): {default_store} does not exist" in err
    assert "--directory memory:demo" in err
    create_database(tmp_path / default_store, DEMO_TABLES)
    code, out, _ = run(capsys, "eval", str(FIXTURES / "derived-rcpt-1.json"),
                       "--policies", str(POLICIES))
    assert code == 0
    assert f"directory: {Config().directory}" in out.splitlines()


def test_eval_reads_the_configured_directory(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty.sqlite3"
    create_database(empty)  # no lists: the rcpt fixture's list is unknown here
    monkeypatch.setenv("KOMM_DIRECTORY", f"sqlite:{empty}")
    code, out, _ = run(capsys, "eval", str(FIXTURES / "derived-rcpt-1.json"),
                       "--policies", str(POLICIES), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["directory"] == f"sqlite:{empty}"
    assert data["response"]["response"]["message"] == "No such mailing list"
    toml = tmp_path / "komm.toml"
    toml.write_text('[directory]\nurl = "memory:demo"\n')
    monkeypatch.delenv("KOMM_DIRECTORY")
    code, out, _ = run(capsys, "eval", str(FIXTURES / "derived-rcpt-1.json"), "--config",
                       str(toml), "--policies", str(POLICIES), "--format", "json")
    assert code == 0
    assert json.loads(out)["directory"] == "memory:demo"
    assert json.loads(out)["response"] == {"action": "accept"}


# ---------------------------------------------------------------------------------------
# CLI messages, help, version


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert out == f"komm-policy {version()}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version())


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


def test_every_option_has_help_text() -> None:
    missing = [f"{parser.prog} {' / '.join(action.option_strings) or action.dest}"
               for parser in _all_parsers(build_parser()) for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction)
               and not action.help]
    assert missing == []


@pytest.mark.parametrize(("argv", "expected"), [
    ([], "komm-policy: error: choose a command: check, "),
    (["db"], "komm-policy db: error: choose a command: init, schema, export, import, delete"),
])
def test_a_missing_command_lists_the_choices(capsys: pytest.CaptureFixture[str],
                                             argv: list[str], expected: str) -> None:
    err = usage_error(capsys, *argv)
    assert expected in err
    assert not INTERNALS.search(err), err


def test_missing_files_are_named_plainly(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    for argv in (["eval", "--directory", "memory:demo", "--policies", str(POLICIES),
                  str(missing)],
                 ["db", "import", str(missing), "--path", str(tmp_path / "x.sqlite3")],
                 ["check", str(tmp_path / "nowhere")]):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert "no such file or directory" in err.lower(), err
        assert not INTERNALS.search(err), err


def test_bad_environment_value_names_the_variable() -> None:
    env = {**os.environ, "KOMM_PORT": "abc", "KOMM_DIRECTORY": "memory:demo",
           "KOMM_POLICIES": str(POLICIES)}
    done = subprocess.run([sys.executable, "-m", "komm_policy", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "KOMM_PORT: expected a whole number, got 'abc'" in done.stderr
    assert not INTERNALS.search(done.stderr), done.stderr


# ---------------------------------------------------------------------------------------
# eval --explain


def _explain_lines(out: str, section: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index(f"{section}:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  ")),
               len(lines))
    return lines[start:end]


def test_explain_columns_align_for_any_line_number(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    padding = "# padding\n" * 120
    (policies / "a.policy").write_text(
        "stage rcpt {\n    rule short: when sender == \"x@y.example\" reject\n"
        + padding + "    rule a_much_longer_rule_name_than_usual: when rcpt == \"nobody@x\""
        " reject\n    default accept\n}\n")
    code, out, _ = run(capsys, "eval", "--directory", "memory:demo", "--policies",
                       str(policies), str(FIXTURES / "derived-rcpt-1.json"), "--explain")
    assert code == 0
    rules = _explain_lines(out, "rules")
    assert len(rules) == 2
    assert ":2 " in rules[0] and ":123 " in rules[1]
    names = [line.index(word) for line, word in zip(
        rules, ("short", "a_much_longer_rule_name_than_usual"), strict=True)]
    assert names[0] == names[1]
    outcomes = [line.index("no match") for line in rules]
    assert outcomes[0] == outcomes[1]
    assert "lookups:" not in out.splitlines()  # no lookups: no empty section


def test_explain_omits_an_empty_rules_section(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.policy").write_text("stage rcpt {\n    default accept\n}\n")
    code, out, _ = run(capsys, "eval", "--directory", "memory:demo", "--policies",
                       str(policies), str(FIXTURES / "derived-rcpt-1.json"), "--explain")
    assert code == 0
    assert "rules:" not in out.splitlines() and "lookups:" not in out.splitlines()
    assert "action:   accept" in out


# ---------------------------------------------------------------------------------------
# The running service


def test_readyz_degraded_while_a_broken_edit_waits(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch") as server:
        before = httpx.get(f"{server.url}/readyz").json()
        assert before["status"] == "ok"
        broken = deployment.policies / "99-broken.policy"
        broken.write_text("stage connect {\n  rule oops: when client.ip = 1.2.3.4 reject\n}\n")
        server.signal(signal.SIGHUP)

        def degraded() -> bool:
            return httpx.get(f"{server.url}/readyz").json()["status"] == "degraded"
        assert wait_for(degraded)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["policy_version"] == before["policy_version"]
        assert "99-broken.policy:2:29: error E005" in body["diagnostic"]
        broken.unlink()  # back to the files of the running version: unchanged, and ok
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: httpx.get(f"{server.url}/readyz").json()["status"] == "ok")
        assert "policies unchanged: version " + before["policy_version"] in server.output()


def test_sighup_with_unchanged_files_says_so(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", "--shadow") as server:
        assert "shadow mode: every hook is answered accept" in server.output()
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: "policies unchanged" in server.output())
        assert "policies reloaded" not in server.output()


def test_workers_each_log_their_policy_version(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", "--workers", "2") as server:
        version_line = re.compile(r"worker (\d+): policies version ([0-9a-f]+) \(\d+ rules\)")
        assert wait_for(lambda: len(version_line.findall(server.output())) == 2)
        found = version_line.findall(server.output())
        assert len({pid for pid, _ in found}) == 2
        expected = httpx.get(f"{server.url}/readyz").json()["policy_version"]
        assert {v for _, v in found} == {expected}
        time.sleep(0)  # the workers keep serving
        assert httpx.get(f"{server.url}/healthz").status_code == 200
