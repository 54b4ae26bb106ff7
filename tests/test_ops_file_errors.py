"""Operator files that cannot be read as what they should be (a tester's findings): a
komm.toml, schema.toml or *.test.toml that is not UTF-8 or nests too deeply for tomllib,
and a `db --path` that is no database.  Each is a message naming the file (positioned
where there is a position) and exit status 2 like any other usage or configuration error,
never a traceback."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from komm_policy.cli import main
from komm_policy.config import load_config
from komm_policy.hook.service import HookService
from komm_policy.textfile import MAX_TOML_NESTING, loads_toml, nesting_position

from .conftest import POLICIES

NOT_UTF8 = b"\xff\xfe[server]\n"
DEEP = "x = " + "[" * 5000 + "]" * 5000 + "\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`komm-policy ARGV` in-process: (exit status, stdout, stderr); a `SystemExit` (the
    `db` commands exit from their helpers) is its status."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and "Error:" not in err, err


@pytest.fixture()
def no_config_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("KOMM_CONFIG", "KOMM_POLICIES", "KOMM_DIRECTORY", "KOMM_TOKEN",
                 "KOMM_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _policies(tmp_path: Path, schema: bytes | None = None) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    if schema is not None:
        (directory / "schema.toml").write_bytes(schema)
    return directory


# -- komm.toml ----------------------------------------------------------------------------


def test_serve_names_a_config_file_that_is_not_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(NOT_UTF8)
    code, _out, err = run(capsys, "serve", "--config", str(config))
    assert code == 2
    assert f"{config}:1:1: not UTF-8 text (byte 0xff" in err
    _no_traceback(err)


@pytest.mark.parametrize("argv", [("eval", "-"), ("db", "schema")])
def test_a_config_file_that_is_not_utf8_through_komm_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch, argv: tuple[str, ...]) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(b"[policies]\npath = \"p\"\n\xc3(\n")
    no_config_env.setenv("KOMM_CONFIG", str(config))
    if argv[0] == "db":
        store = tmp_path / "k.sqlite3"
        assert run(capsys, "db", "init", "--path", str(store))[0] == 0
        argv = (*argv, "--path", str(store))
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert f"{config}:3:1: not UTF-8 text (byte 0xc3" in err
    _no_traceback(err)


def test_a_deeply_nested_config_file_is_a_positioned_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch) -> None:
    config = tmp_path / "komm.toml"
    config.write_text("[server]\nport = 3002\n" + DEEP)
    code, _out, err = run(capsys, "serve", "--config", str(config))
    assert code == 2
    assert (f"{config}:3:{4 + MAX_TOML_NESTING + 1}: arrays or inline tables nested too "
            "deeply") in err
    _no_traceback(err)


# -- schema.toml --------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [NOT_UTF8, DEEP.encode()], ids=["not-utf8", "deep"])
def test_check_eval_and_replay_name_a_bad_schema_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch, schema: bytes) -> None:
    policies = _policies(tmp_path, schema)
    request = tmp_path / "req.json"
    request.write_text("{}")
    log = tmp_path / "log.jsonl"
    log.write_text("")
    for argv in (("check", str(policies)),
                 ("eval", "--policies", str(policies), "--directory", "memory:demo",
                  str(request)),
                 ("replay", str(log), "--policies", str(policies), "--directory",
                  "memory:demo")):
        code, out, err = run(capsys, *argv)
        shown = out + err
        assert code == 1, (argv, shown)  # the policy set has errors: a finding
        assert f"{policies / 'schema.toml'}:1:" in shown and "E144" in shown, (argv, shown)
        _no_traceback(shown)


@pytest.mark.parametrize("schema", [NOT_UTF8, DEEP.encode()], ids=["not-utf8", "deep"])
def test_db_schema_names_a_bad_schema_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch, schema: bytes) -> None:
    policies = _policies(tmp_path, schema)
    store = tmp_path / "k.sqlite3"
    assert run(capsys, "db", "init", "--path", str(store))[0] == 0
    code, out, err = run(capsys, "db", "schema", "--path", str(store), "--policies",
                         str(policies))
    assert (code, out) == (2, "")
    assert f"komm-policy db schema: {policies / 'schema.toml'}:1:" in err
    _no_traceback(err)


def test_a_running_service_names_the_schema_file_a_reload_cannot_read(
        tmp_path: Path) -> None:
    policies = _policies(tmp_path)
    config = load_config(env={"KOMM_POLICIES": str(policies), "KOMM_DIRECTORY": "memory:demo",
                              "KOMM_LOG_JSONL": "", "KOMM_LOG_SQLITE": "false",
                              "KOMM_LOG_SPOOL": str(tmp_path / "spool")})
    service = HookService.from_config(config)
    try:
        version = service.policy_set.version
        (policies / "schema.toml").write_bytes(NOT_UTF8)
        result = service.reload()
        assert not result.ok
        assert service.policy_set.version == version  # the old set keeps serving
        assert service.reload_problem is not None
        assert f"{policies / 'schema.toml'}:1:1" in service.reload_problem
        assert "not UTF-8" in service.reload_problem
    finally:
        service.close()


# -- *.test.toml --------------------------------------------------------------------------


def test_a_deeply_nested_test_file_is_an_error_of_that_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch) -> None:
    policies = _policies(tmp_path)
    bad = policies / "99-deep.test.toml"
    bad.write_text(DEEP)
    code, out, err = run(capsys, "test", str(policies))
    assert code == 1
    assert f"{bad}:1" in out + err and "nested too deeply" in out + err
    _no_traceback(err)


# -- the nesting scan ---------------------------------------------------------------------


def test_the_nesting_scan_skips_strings_and_comments_and_counts_lines() -> None:
    text = ('a = "[[[[" # [[[[\nb = \'\'\'\n[[[[\n\'\'\'\nc = ' + "[" * (MAX_TOML_NESTING + 1)
            + "]" * (MAX_TOML_NESTING + 1) + "\n")
    assert nesting_position(text) == (5, 5 + MAX_TOML_NESTING)
    assert nesting_position("x = [[1], {a = [2]}]\n") is None
    with pytest.raises(tomllib.TOMLDecodeError, match=r"\(at line 1, column 105\)"):
        loads_toml(DEEP)
    assert loads_toml("x = [[1]]") == {"x": [[1]]}


# -- db --path that is no database --------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ("schema",), ("init",), ("export",), ("delete", "blocked_ips", "1"), ("import", "{}"),
])
def test_db_commands_refuse_a_file_that_is_not_a_database(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch, argv: tuple[str, ...]) -> None:
    garbage = tmp_path / "g.sqlite3"
    garbage.write_text("garbage\n")
    if argv[0] == "import":
        data = tmp_path / "e.json"
        data.write_text("{}")
        argv = ("import", str(data))
    schema = () if argv[0] == "init" else ("--policies", str(tmp_path))  # no schema.toml
    code, out, err = run(capsys, "db", *argv, "--path", str(garbage), *schema)
    assert (code, out) == (2, "")
    assert f"{garbage}: cannot use it as a SQLite database: file is not a database" in err
    _no_traceback(err)
    assert garbage.read_text() == "garbage\n"  # untouched


@pytest.mark.parametrize("command", ["export", "init", "schema"])
def test_db_commands_refuse_a_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch, command: str) -> None:
    code, out, err = run(capsys, "db", command, "--path", str(tmp_path))
    assert (code, out) == (2, "")
    assert f"{tmp_path}: is a directory, not a database file" in err
    _no_traceback(err)


def test_db_init_names_a_path_it_cannot_create(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        no_config_env: pytest.MonkeyPatch) -> None:
    proc = Path("/proc")  # a directory nobody (not even root) creates files in
    if not proc.is_dir():
        pytest.skip("no /proc on this system")
    target = proc / "komm-policy-test.sqlite3"
    code, out, err = run(capsys, "db", "init", "--path", str(target))
    assert (code, out) == (2, "")
    assert f"{target}: cannot use it as a SQLite database: unable to open" in err
    _no_traceback(err)
