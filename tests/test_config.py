"""Service configuration: defaults, the TOML file, KOMM_* variables, flags, validation.

Every test passes `env={...}` explicitly (the process environment is never read or
changed) and builds its policy directory, store and config file under `tmp_path`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from komm_policy.cli.serve import server_limits
from komm_policy.config import OPTIONS, Config, ConfigError, load_config


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "10-rules.policy").write_text("stage connect { default accept }\n")
    return directory


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "komm.sqlite3"
    path.write_bytes(b"")  # validation only checks that the file exists
    return path


@pytest.fixture
def base_env(policies: Path) -> dict[str, str]:
    """The least an environment needs to validate: policies and an in-memory directory."""
    return {"KOMM_POLICIES": str(policies), "KOMM_DIRECTORY": "memory:demo"}


def write_toml(tmp_path: Path, text: str, name: str = "komm.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    """The ConfigError's problem lines (each `  - …`)."""
    lines = str(excinfo.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert all(line.startswith("  - ") for line in lines[1:]), lines
    return [line[4:] for line in lines[1:]]


# ---------------------------------------------------------------------------------------
# Sources and precedence


def test_defaults(base_env: dict[str, str], policies: Path) -> None:
    config = load_config(env=base_env)
    assert config == Config(policies=policies, directory="memory:demo")
    assert config.host == "127.0.0.1"
    assert config.port == 3002
    assert config.workers == 1
    assert config.token is None
    assert config.max_body_bytes == 64 * 1024 * 1024
    assert config.shadow is False
    assert config.watch is True
    assert config.refresh_interval == 1.0
    assert config.max_staleness == 30.0
    assert config.log_jsonl == "var/decisions.jsonl"
    assert config.log_jsonl_max_bytes == 100 * 1024 * 1024
    assert config.log_jsonl_backups == 10
    assert config.log_sqlite is True
    assert config.redact_client_ip is False
    assert config.sqlite_path is None


def test_dataclass_defaults_match_the_readme() -> None:
    config = Config()
    assert config.directory == "sqlite:var/komm.sqlite3"
    assert config.sqlite_path == Path("var/komm.sqlite3")
    assert config.policies == Path("policies")


def test_every_option_has_a_komm_variable_and_a_config_field() -> None:
    fields = set(Config.__dataclass_fields__)
    for option in OPTIONS:
        assert option.env == "KOMM_" + option.name.upper(), option
        assert option.name in fields
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)


def test_toml_file_values(tmp_path: Path, policies: Path, store: Path) -> None:
    path = write_toml(tmp_path, f"""
[server]
host = "0.0.0.0"
port = 4000
workers = 3
token = "s3cret"
max_body_bytes = 2048
shadow = true

[policies]
path = "{policies}"
watch = false

[directory]
url = "sqlite:{store}"
refresh_interval = 0.5
max_staleness = 5.0

[log]
jsonl = ""
jsonl_max_bytes = 4096
jsonl_backups = 2
sqlite = false
redact_client_ip = true
""")
    config = load_config(path, env={})
    assert config == Config(
        host="0.0.0.0", port=4000, workers=3, token="s3cret", max_body_bytes=2048,
        shadow=True, policies=policies, watch=False, directory=f"sqlite:{store}",
        refresh_interval=0.5, max_staleness=5.0, log_jsonl="", log_jsonl_max_bytes=4096,
        log_jsonl_backups=2, log_sqlite=False, redact_client_ip=True)
    assert config.sqlite_path == store


def test_config_path_from_komm_config(tmp_path: Path, policies: Path) -> None:
    path = write_toml(tmp_path, f'[server]\nport = 4100\n[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:empty"\n')
    config = load_config(env={"KOMM_CONFIG": str(path)})
    assert config.port == 4100
    assert config.directory == "memory:empty"


def test_environment_overrides_the_file(tmp_path: Path, policies: Path) -> None:
    path = write_toml(tmp_path, f"""
[server]
port = 4000
shadow = false
[policies]
path = "{policies}"
[directory]
url = "memory:demo"
refresh_interval = 2.0
""")
    config = load_config(path, env={"KOMM_PORT": "5000", "KOMM_SHADOW": "yes",
                                    "KOMM_REFRESH_INTERVAL": "0.25", "KOMM_WATCH": "off",
                                    "KOMM_LOG_JSONL": ""})
    assert config.port == 5000
    assert config.shadow is True
    assert config.refresh_interval == 0.25
    assert config.watch is False
    assert config.log_jsonl == ""


@pytest.mark.parametrize(("text", "value"), [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
])
def test_boolean_spellings_in_the_environment(base_env: dict[str, str], text: str,
                                              value: bool) -> None:
    assert load_config(env={**base_env, "KOMM_SHADOW": text}).shadow is value


def test_overrides_win_over_environment_and_file(tmp_path: Path, policies: Path) -> None:
    other = tmp_path / "other-policies"
    other.mkdir()
    (other / "a.policy").write_text("stage connect { default accept }\n")
    path = write_toml(tmp_path, f'[server]\nport = 4000\nhost = "10.0.0.1"\n'
                                f'[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:demo"\n')
    config = load_config(path, env={"KOMM_PORT": "5000", "KOMM_TOKEN": "from-env"},
                         overrides={"port": 6000, "token": "from-flag", "policies": str(other),
                                    "shadow": True, "watch": False})
    assert config.port == 6000
    assert config.token == "from-flag"
    assert config.policies == other
    assert config.shadow is True
    assert config.watch is False
    assert config.host == "10.0.0.1"  # untouched by env and flags


def test_none_overrides_are_ignored(base_env: dict[str, str]) -> None:
    """argparse leaves unset flags as None: they must not erase file or env values."""
    config = load_config(env={**base_env, "KOMM_PORT": "5000"},
                         overrides={"port": None, "host": None, "shadow": None})
    assert config.port == 5000
    assert config.host == "127.0.0.1"
    assert config.shadow is False


# ---------------------------------------------------------------------------------------
# The token


def test_token_from_komm_token(base_env: dict[str, str]) -> None:
    assert load_config(env={**base_env, "KOMM_TOKEN": "abc"}).token == "abc"


def test_token_from_komm_token_file(tmp_path: Path, base_env: dict[str, str]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  file-token\n")
    config = load_config(env={**base_env, "KOMM_TOKEN_FILE": str(token_file)})
    assert config.token == "file-token"  # surrounding whitespace and newline stripped


def test_token_file_variable_and_token_variable_are_refused_together(
        tmp_path: Path, base_env: dict[str, str]) -> None:
    """Both set: which secret is meant is not guessed (the file used to win silently)."""
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={**base_env, "KOMM_TOKEN": "env-token",
                         "KOMM_TOKEN_FILE": str(token_file)})
    assert problems_of(excinfo) == ["KOMM_TOKEN and KOMM_TOKEN_FILE are both set: set one "
                                    "(which token is meant is not guessed)"]


def test_token_from_server_token_file(tmp_path: Path, policies: Path) -> None:
    token_file = tmp_path / "secret"
    token_file.write_text("toml-file-token\n")
    path = write_toml(tmp_path, f'[server]\ntoken_file = "{token_file}"\n'
                                f'[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:demo"\n')
    assert load_config(path, env={}).token == "toml-file-token"
    # the environment still overrides it
    assert load_config(path, env={"KOMM_TOKEN": "env"}).token == "env"


def test_unreadable_token_files_are_problems(tmp_path: Path, policies: Path) -> None:
    path = write_toml(tmp_path, f'[server]\ntoken_file = "{tmp_path / "missing-a"}"\n'
                                f'[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:demo"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={"KOMM_TOKEN_FILE": str(tmp_path / "missing-b")})
    problems = problems_of(excinfo)
    assert any("[server] token_file" in p and "missing-a" in p for p in problems), problems
    assert any(p.startswith("KOMM_TOKEN_FILE:") and "missing-b" in p for p in problems)


def test_redacted_hides_the_token(base_env: dict[str, str], policies: Path) -> None:
    config = load_config(env={**base_env, "KOMM_TOKEN": "very-secret-token"})
    shown = config.redacted()
    assert shown["token"] == "(set)"
    assert "very-secret-token" not in repr(shown)
    assert shown["policies"] == str(policies)
    assert shown["port"] == 3002
    assert set(shown) == set(Config.__dataclass_fields__)
    assert load_config(env=base_env).redacted()["token"] is None


# ---------------------------------------------------------------------------------------
# Validation: every problem at once


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[server]
port = 70000
workers = 0
token = "   "
bogus = 1
""")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={
            "KOMM_POLICIES": str(tmp_path / "no-such-dir"),
            "KOMM_DIRECTORY": "postgres://db.example/komm",
            "KOMM_REFRESH_INTERVAL": "0",
            "KOMM_MAX_STALENESS": "-1",
        })
    problems = problems_of(excinfo)
    text = "\n".join(problems)
    # each names where the value came from: the file, section and key; the variable
    assert f"{path} [server] port: 70000 is not a TCP port (0-65535)" in problems
    assert f"{path} [server] workers: must be at least 1, got 0" in problems
    assert f"{path} [server] token: must not be empty when set" in problems
    assert "unknown option [server] bogus" in text
    assert f"KOMM_POLICIES: {tmp_path / 'no-such-dir'} is not a directory" in problems
    assert any(p.startswith("KOMM_DIRECTORY: unknown directory 'postgres://db.example/komm'")
               for p in problems)
    assert "KOMM_REFRESH_INTERVAL: must be positive" in problems
    assert "KOMM_MAX_STALENESS: must be at least refresh_interval" in problems
    assert len(problems) == 8, problems


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_bad_port(base_env: dict[str, str], port: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={**base_env, "KOMM_PORT": port})
    assert problems_of(excinfo) == [f"KOMM_PORT: {port} is not a TCP port (0-65535)"]


@pytest.mark.parametrize("port", ["0", "65535"])
def test_port_bounds_are_accepted(base_env: dict[str, str], port: str) -> None:
    assert load_config(env={**base_env, "KOMM_PORT": port}).port == int(port)


def test_empty_token(base_env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    for env, problem in (({"KOMM_TOKEN": ""}, "KOMM_TOKEN: must not be empty when set"),
                         ({"KOMM_TOKEN_FILE": str(empty)},
                          f"KOMM_TOKEN_FILE: token file {empty} is empty (write the token "
                          "into it, or remove the setting to run without a token)")):
        with pytest.raises(ConfigError) as excinfo:
            load_config(env={**base_env, **env})
        assert problems_of(excinfo) == [problem]


def test_policies_directory_without_policy_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a policy")
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={"KOMM_POLICIES": str(empty), "KOMM_DIRECTORY": "memory:demo"})
    assert problems_of(excinfo) == [f"KOMM_POLICIES: {empty} holds no *.policy files"]


def test_policies_path_that_is_a_file(tmp_path: Path, policies: Path) -> None:
    file = policies / "10-rules.policy"
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={"KOMM_POLICIES": str(file), "KOMM_DIRECTORY": "memory:demo"})
    assert problems_of(excinfo) == [f"KOMM_POLICIES: {file} is not a directory"]


@pytest.mark.parametrize("url", ["memory:other", "redis://localhost", "komm.sqlite3"])
def test_unknown_directory_url(policies: Path, url: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={"KOMM_POLICIES": str(policies), "KOMM_DIRECTORY": url})
    [problem] = problems_of(excinfo)
    assert problem.startswith(f"KOMM_DIRECTORY: unknown directory {url!r}")
    assert "sqlite:PATH, spacetimedb://HOST:PORT/DB, memory:demo or memory:empty" in problem


def test_spacetimedb_directory_and_its_token(policies: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "stdb.token"
    token_file.write_text("tok.en.value\n")
    config = load_config(env={"KOMM_POLICIES": str(policies),
                              "KOMM_DIRECTORY": "spacetimedb://127.0.0.1:3000/komm",
                              "KOMM_SPACETIMEDB_TOKEN_FILE": str(token_file)})
    assert config.spacetimedb_token == "tok.en.value"
    assert config.redacted()["spacetimedb_token"] == "(set)"
    toml = tmp_path / "komm.toml"
    toml.write_text(f'[directory]\nurl = "spacetimedb+https://db.example/komm"\n'
                    f'token_file = "{token_file}"\n')
    config = load_config(toml, env={"KOMM_POLICIES": str(policies)})
    assert config.spacetimedb_token == "tok.en.value"
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={"KOMM_POLICIES": str(policies),
                         "KOMM_DIRECTORY": "spacetimedb://user:pw@host/komm"})
    [problem] = problems_of(excinfo)
    assert "no credentials" in problem


@pytest.mark.parametrize("url", ["memory:demo", "memory:empty"])
def test_memory_directories(policies: Path, url: str) -> None:
    config = load_config(env={"KOMM_POLICIES": str(policies), "KOMM_DIRECTORY": url})
    assert config.directory == url
    assert config.sqlite_path is None


def test_existing_sqlite_store(policies: Path, store: Path) -> None:
    config = load_config(env={"KOMM_POLICIES": str(policies),
                              "KOMM_DIRECTORY": f"sqlite:{store}"})
    assert config.sqlite_path == store


def test_missing_sqlite_store_names_db_init(policies: Path, tmp_path: Path) -> None:
    missing = tmp_path / "var" / "komm.sqlite3"
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={"KOMM_POLICIES": str(policies), "KOMM_DIRECTORY": f"sqlite:{missing}"})
    assert problems_of(excinfo) == [
        f"KOMM_DIRECTORY: {missing} does not exist (create it with "
        f"`komm-policy db init --path {missing}`)"]


def test_sqlite_url_without_a_path(policies: Path) -> None:
    """`sqlite:` names no file.  (Path("") is ".", which exists: the check must not be
    fooled into accepting the current directory as the store.)"""
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={"KOMM_POLICIES": str(policies), "KOMM_DIRECTORY": "sqlite:"})
    assert problems_of(excinfo) == [
        "KOMM_DIRECTORY: sqlite: needs a path, e.g. sqlite:var/komm.sqlite3"]


def test_refresh_and_staleness(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={**base_env, "KOMM_REFRESH_INTERVAL": "-1"})
    assert problems_of(excinfo) == ["KOMM_REFRESH_INTERVAL: must be positive"]
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={**base_env, "KOMM_REFRESH_INTERVAL": "5",
                         "KOMM_MAX_STALENESS": "4.9"})
    assert problems_of(excinfo) == ["KOMM_MAX_STALENESS: must be at least refresh_interval"]
    config = load_config(env={**base_env, "KOMM_REFRESH_INTERVAL": "5",
                              "KOMM_MAX_STALENESS": "5"})
    assert (config.refresh_interval, config.max_staleness) == (5.0, 5.0)


def test_size_limits(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={**base_env, "KOMM_MAX_BODY_BYTES": "1023",
                         "KOMM_LOG_JSONL_MAX_BYTES": "10", "KOMM_LOG_JSONL_BACKUPS": "-1",
                         "KOMM_HOST": ""})
    assert problems_of(excinfo) == [
        "KOMM_HOST: must not be empty",
        "KOMM_MAX_BODY_BYTES: 1023 is too small (min 1024)",
        "KOMM_LOG_JSONL_MAX_BYTES: too small (min 1024)",
        "KOMM_LOG_JSONL_BACKUPS: must not be negative",
    ]


def test_unknown_toml_option_names_the_known_ones(tmp_path: Path, policies: Path) -> None:
    path = write_toml(tmp_path, f'[server]\nprot = 3002\n[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:demo"\n[logging]\nlevel = "x"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    problems = problems_of(excinfo)
    assert len(problems) == 2, problems
    first, second = problems
    assert first.startswith(f"{path}: unknown option [server] prot (known: ")
    assert second.startswith(f"{path}: unknown option [logging] level (known: ")
    for option in OPTIONS:
        assert f"[{option.section}] {option.key}" in first


def test_toml_value_that_is_not_a_table(tmp_path: Path, policies: Path) -> None:
    path = write_toml(tmp_path, f'port = 3002\n[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:demo"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    assert problems_of(excinfo) == [f"{path}: `port` must be a [section]"]


def test_toml_syntax_error_and_missing_file(tmp_path: Path, base_env: dict[str, str]) -> None:
    broken = write_toml(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(broken, env=base_env)
    [problem] = problems_of(excinfo)
    assert problem.startswith(f"{broken}:1:8: ")  # positioned, as the other files' errors
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(missing, env=base_env)
    [problem] = problems_of(excinfo)
    assert problem.startswith(f"{missing}: ")


def test_wrong_types_from_the_environment_name_the_variable(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={**base_env, "KOMM_PORT": "abc", "KOMM_SHADOW": "maybe",
                         "KOMM_MAX_STALENESS": "soon", "KOMM_WORKERS": "2.5"})
    problems = problems_of(excinfo)
    assert len(problems) == 4, problems
    by_origin = {p.split(":", 1)[0]: p for p in problems}
    assert set(by_origin) == {"KOMM_PORT", "KOMM_SHADOW", "KOMM_MAX_STALENESS", "KOMM_WORKERS"}
    assert by_origin["KOMM_PORT"] == "KOMM_PORT: expected a whole number, got 'abc'"
    assert by_origin["KOMM_SHADOW"] == "KOMM_SHADOW: expected true or false, got 'maybe'"
    assert "'soon'" in by_origin["KOMM_MAX_STALENESS"]


def test_wrong_types_in_the_file_name_section_and_key(tmp_path: Path, policies: Path) -> None:
    path = write_toml(tmp_path, f'[server]\nport = "abc"\nshadow = "maybe"\nworkers = true\n'
                                f'host = 127\n[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:demo"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    problems = problems_of(excinfo)
    assert len(problems) == 4, problems
    assert any(p.startswith(f"{path} [server] port: ") for p in problems)
    assert f"{path} [server] shadow: expected true or false, got 'maybe'" in problems
    assert f"{path} [server] workers: expected a number, got True" in problems
    assert f"{path} [server] host: expected text, got 127" in problems


def test_fractional_number_for_an_integer_option_is_a_problem(tmp_path: Path,
                                                              policies: Path) -> None:
    """`port = 3002.9` is not a port number; it must not be truncated to 3002."""
    path = write_toml(tmp_path, f'[server]\nport = 3002.9\n[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:demo"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    [problem] = problems_of(excinfo)
    assert problem.startswith(f"{path} [server] port: ")


def test_token_file_of_the_wrong_type_is_a_problem(tmp_path: Path, policies: Path) -> None:
    """A non-text `token_file` is reported like every other bad value (not a TypeError)."""
    path = write_toml(tmp_path, f'[server]\ntoken_file = 5\n[policies]\npath = "{policies}"\n'
                                '[directory]\nurl = "memory:demo"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    [problem] = problems_of(excinfo)
    assert problem.startswith(f"{path} [server] token_file")


def test_wrong_override_types_name_the_flag(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(env=base_env, overrides={"port": "x", "shadow": "perhaps"})
    problems = problems_of(excinfo)
    assert any(p.startswith("--port: ") for p in problems), problems
    assert "--shadow: expected true or false, got 'perhaps'" in problems


# ---------------------------------------------------------------------------------------
# Connection limits (issue 9 §4) and status-endpoint auth (§5)


def test_connection_limits_from_file_environment_and_flags(tmp_path: Path,
                                                           base_env: dict[str, str]) -> None:
    path = write_toml(tmp_path, "[server]\nheader_timeout = 2.5\nmax_concurrency = 64\n"
                                "token = \"t\"\nstatus_auth = true\n")
    config = load_config(path, env={**base_env, "KOMM_BODY_TIMEOUT": "7",
                                    "KOMM_MAX_CONNECTIONS": "900"},
                         overrides={"shutdown_timeout": 3.0, "idle_timeout": 4.0})
    assert (config.header_timeout, config.body_timeout, config.idle_timeout) == (2.5, 7.0, 4.0)
    assert (config.max_connections, config.max_concurrency) == (900, 64)
    assert config.shutdown_timeout == 3.0
    assert config.status_auth is True
    defaults = Config()
    assert defaults.header_timeout + defaults.body_timeout < 30  # Stalwart's hook timeout


def test_bad_connection_limits_are_each_reported(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={**base_env, "KOMM_HEADER_TIMEOUT": "0", "KOMM_BODY_TIMEOUT": "-1",
                         "KOMM_MAX_CONCURRENCY": "0", "KOMM_MAX_CONNECTIONS": "-5",
                         "KOMM_SHUTDOWN_TIMEOUT": "-1", "KOMM_STATUS_AUTH": "yes",
                         "KOMM_IDLE_TIMEOUT": "soon"})
    problems = problems_of(excinfo)
    assert "KOMM_IDLE_TIMEOUT: expected a number, got 'soon'" in problems
    for expected in ("KOMM_HEADER_TIMEOUT: must be positive",
                     "KOMM_BODY_TIMEOUT: must be positive",
                     "KOMM_MAX_CONCURRENCY: must be at least 1",
                     "KOMM_MAX_CONNECTIONS: must not be negative",
                     "KOMM_SHUTDOWN_TIMEOUT: must not be negative",
                     "KOMM_STATUS_AUTH: needs a token"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_linger_bounds_from_each_source_and_the_derived_byte_default(
        tmp_path: Path, base_env: dict[str, str]) -> None:
    defaults = server_limits(load_config(env=base_env))
    assert (defaults.linger_timeout, defaults.linger_bytes) == (2.0, 64 * 1024 * 1024)
    raised = load_config(env={**base_env, "KOMM_MAX_BODY_BYTES": str(200 * 1024 * 1024)})
    assert server_limits(raised).linger_bytes == 200 * 1024 * 1024  # follows the body limit
    path = write_toml(tmp_path, "[server]\nlinger_timeout = 7.5\nlinger_bytes = 4096\n")
    config = load_config(path, env=base_env)
    assert (server_limits(config).linger_timeout, server_limits(config).linger_bytes) == (
        7.5, 4096)
    config = load_config(path, env={**base_env, "KOMM_LINGER_BYTES": "8192"},
                         overrides={"linger_timeout": 0.0})
    assert (server_limits(config).linger_timeout, server_limits(config).linger_bytes) == (
        0.0, 8192)
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={**base_env, "KOMM_LINGER_TIMEOUT": "-1", "KOMM_LINGER_BYTES": "-2"})
    problems = problems_of(excinfo)
    for expected in ("KOMM_LINGER_TIMEOUT: must not be negative",
                     "KOMM_LINGER_BYTES: must not be negative"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)
