"""Service configuration a tester got wrong without being told (each through `serve`'s
main, exit status 2 before anything starts): a token file of two lines, a token given
twice in one place, bad log paths, and range errors that did not say where the value
came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from komm_policy.cli import main
from komm_policy.config import ConfigError, load_config

from .conftest import POLICIES


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A usable configuration in the environment (no KOMM_* from outside)."""
    import os
    for name in list(os.environ):
        if name.startswith("KOMM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KOMM_POLICIES", str(POLICIES))
    monkeypatch.setenv("KOMM_DIRECTORY", "memory:demo")
    monkeypatch.setenv("KOMM_LOG_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("KOMM_LOG_JSONL", str(tmp_path / "decisions.jsonl"))
    return monkeypatch


def serve(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """`serve ARGV` that must refuse to start: its stderr (exit status 2 checked)."""
    code = main(["serve", *argv])
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    assert "Traceback" not in err
    return err


# -- tokens -------------------------------------------------------------------------------


def test_a_token_file_of_two_lines_is_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch) -> None:
    two = tmp_path / "two"
    two.write_text("a\nb\n")
    env.setenv("KOMM_TOKEN_FILE", str(two))
    err = serve(capsys)
    assert (f"KOMM_TOKEN_FILE: token file {two} holds 2 lines: a token is one line") in err


@pytest.mark.parametrize(("section", "key"), [("server", "token_file"),
                                              ("directory", "token_file"),
                                              ("log", "spacetimedb_token_file")])
def test_every_token_file_of_two_lines_is_refused(tmp_path: Path, section: str,
                                                  key: str) -> None:
    two = tmp_path / "two"
    two.write_text("a\r\nb")
    config = tmp_path / "komm.toml"
    config.write_text(f'[{section}]\n{key} = "{two}"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(config, env={"KOMM_POLICIES": str(POLICIES),
                                 "KOMM_DIRECTORY": "memory:demo"}, only=())
    assert f"{config} [{section}] {key}: token file {two} holds 2 lines" in str(excinfo.value)


@pytest.mark.parametrize(("variable", "file_variable"), [
    ("KOMM_TOKEN", "KOMM_TOKEN_FILE"),
    ("KOMM_SPACETIMEDB_TOKEN", "KOMM_SPACETIMEDB_TOKEN_FILE"),
    ("KOMM_LOG_SPACETIMEDB_TOKEN", "KOMM_LOG_SPACETIMEDB_TOKEN_FILE"),
])
def test_a_token_and_a_token_file_in_the_environment_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch,
        variable: str, file_variable: str) -> None:
    token = tmp_path / "token"
    token.write_text("from-the-file\n")
    env.setenv(variable, "from-the-variable")
    env.setenv(file_variable, str(token))
    err = serve(capsys)
    assert f"{variable} and {file_variable} are both set: set one" in err
    assert "from-the" not in err  # never the secrets


def test_a_token_and_a_token_file_in_one_section_are_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    config = tmp_path / "komm.toml"
    config.write_text(f'[server]\ntoken = "x"\ntoken_file = "{token}"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(config, env={"KOMM_POLICIES": str(POLICIES),
                                 "KOMM_DIRECTORY": "memory:demo"})
    assert f"{config} [server]: token and token_file are both set" in str(excinfo.value)


def test_the_layers_still_override_each_other(tmp_path: Path) -> None:
    """A token from a higher layer (a flag over the environment, the environment over the
    file) is the documented precedence, not an ambiguity."""
    token = tmp_path / "token"
    token.write_text("from-the-file\n")
    config = load_config(env={"KOMM_POLICIES": str(POLICIES), "KOMM_DIRECTORY": "memory:demo",
                              "KOMM_TOKEN_FILE": str(token)},
                         overrides={"token": "from-the-flag"})
    assert config.token == "from-the-flag" and config.token_file is None


# -- log paths ----------------------------------------------------------------------------


def test_a_jsonl_log_that_is_a_directory_is_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch) -> None:
    err = serve(capsys, "--log-jsonl", str(tmp_path))
    assert (f"--log-jsonl: {tmp_path} is a directory, not a file (name the JSONL file in "
            "it)") in err


def test_a_jsonl_log_under_a_file_is_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("")
    target = blocker / "logs" / "d.jsonl"
    env.setenv("KOMM_LOG_JSONL", str(target))
    err = serve(capsys)
    assert f"KOMM_LOG_JSONL: cannot create {target}: {blocker} is not a directory" in err


def test_a_jsonl_log_where_no_file_can_be_made_is_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch) -> None:
    proc = Path("/proc")  # no one, not even root, creates files there
    if not proc.is_dir():
        pytest.skip("no /proc on this system")
    err = serve(capsys, "--log-jsonl", str(proc / "d.jsonl"))
    assert f"--log-jsonl: cannot create {proc / 'd.jsonl'}: " in err


def test_a_spool_that_is_a_file_names_the_option_and_the_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    err = serve(capsys, "--log-spool", str(blocker))
    assert (f"--log-spool: {blocker} exists and is not a directory (the spool is a "
            "directory)") in err
    assert "Errno" not in err
    assert blocker.read_text() == "keep me"


def test_good_log_paths_are_created_and_leave_nothing_behind(tmp_path: Path) -> None:
    jsonl = tmp_path / "new" / "d.jsonl"
    spool = tmp_path / "spool"
    load_config(env={"KOMM_POLICIES": str(POLICIES), "KOMM_DIRECTORY": "memory:demo",
                     "KOMM_LOG_JSONL": str(jsonl), "KOMM_LOG_SPOOL": str(spool)},
                check_paths=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["new", "spool"]


# -- where a bad value came from ----------------------------------------------------------


@pytest.mark.parametrize(("option", "flag", "key", "value", "reason"), [
    ("port", "--port", "[server] port", "70000", "70000 is not a TCP port (0-65535)"),
    ("idle_timeout", "--idle-timeout", "[server] idle_timeout", "0",
     "must be positive, got 0.0"),
    ("workers", "--workers", "[server] workers", "0", "must be at least 1, got 0"),
    ("max_body_bytes", None, "[server] max_body_bytes", "0", "0 is too small (min 1024)"),
    ("token", "--token", "[server] token", " ", "must not be empty when set"),
])
def test_a_range_error_names_the_variable_the_flag_or_the_file_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch,
        option: str, flag: str | None, key: str, value: str, reason: str) -> None:
    variable = f"KOMM_{option.upper()}"
    env.setenv(variable, value)
    assert f"  - {variable}: {reason}\n" in serve(capsys)
    env.delenv(variable)
    if flag is not None:
        assert f"  - {flag}: {reason}\n" in serve(capsys, f"{flag}={value}")
    section, name = key[1:].split("] ")
    config = tmp_path / "komm.toml"
    literal = value if value.strip().isdigit() else f'"{value}"'
    config.write_text(f"[{section}]\n{name} = {literal}\n")
    assert f"  - {config} {key}: {reason}\n" in serve(capsys, "--config", str(config))


def test_log_options_are_named_as_the_operator_wrote_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch) -> None:
    config = tmp_path / "komm.toml"
    config.write_text('[log]\non_spool_error = "drop"\njsonl_max_age = 1e30\n')
    err = serve(capsys, "--config", str(config))
    assert f"{config} [log] on_spool_error: 'drop' is not tempfail or accept" in err
    assert f"{config} [log] jsonl_max_age: 1e+30 is too large (at most 315,360,000 " \
           "seconds)" in err
    assert "log_on_spool_error" not in err and "log_jsonl_max_age" not in err


def test_a_default_that_does_not_work_is_named_by_its_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch) -> None:
    env.delenv("KOMM_DIRECTORY")
    env.chdir(tmp_path)  # no var/komm.sqlite3 here
    assert "  - [directory] url (default): var/komm.sqlite3 does not exist" in serve(capsys)


def test_an_unknown_log_level_variable_is_refused(
        capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch) -> None:
    env.setenv("KOMM_LOG_LEVEL", "verbose")
    err = serve(capsys)
    assert ("KOMM_LOG_LEVEL: 'verbose' is not a log level (one of critical, error, warning, "
            "info, debug)") in err
    env.setenv("KOMM_PORT", "70000")  # reported together with the other problems
    err = serve(capsys)
    assert "KOMM_PORT: 70000" in err and "KOMM_LOG_LEVEL: 'verbose'" in err


def test_the_known_options_list_names_the_token_files(tmp_path: Path) -> None:
    config = tmp_path / "komm.toml"
    config.write_text("[server]\ntoken_fil = 'x'\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(config, env={"KOMM_POLICIES": str(POLICIES),
                                 "KOMM_DIRECTORY": "memory:demo"})
    message = str(excinfo.value)
    assert "unknown option [server] token_fil" in message
    for known in ("[server] token_file", "[directory] token_file",
                  "[log] spacetimedb_token_file"):
        assert known in message
