"""Service configuration: `komm.toml`, then `KOMM_*` environment variables, then flags.

One table (`OPTIONS`) names every option once: its TOML section and key, its environment
variable, its type and default.  Everything is validated before the service starts, and
every problem is reported at once with where the bad value came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .config_options import OPTIONS, Option, limit
from .config_paths import path_problems
from .config_tokens import read_token, token_alphabet_problem, token_text_problem
from .decisionlog.settings import LogSettings
from .decisionlog.spacetimedb_sink import ReducerSpec
from .spacetimedb.limits import MAX_MESSAGE_BYTES, MESSAGE_BYTES_MIN
from .textfile import NotUtf8Error, loads_toml, read_utf8, toml_error_text
from .wire import MAX_MESSAGE_HEADERS

__all__ = ["OPTIONS", "Config", "ConfigError", "Option", "load_config", "token_text_problem",
           "validate"]


_LOG = LogSettings()
_REDUCER = ReducerSpec(url="")
"""The decision log's own defaults: the `[log]` options that set them default to them."""


class ConfigError(Exception):
    """The configuration is unusable; the message lists every problem."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 3002
    workers: int = 1
    token: str | None = None
    token_file: Path | None = None
    """Where `token` was read from (re-read on SIGHUP), if from a file."""
    max_body_bytes: int = 64 * 1024 * 1024
    max_body_buffer_bytes: int = 0
    """Bytes of request bodies held at once per process; 0: 4 x max_body_bytes."""
    shadow: bool = False
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    idle_timeout: float = 20.0
    write_timeout: float = 10.0
    max_connections: int = 0
    max_concurrency: int = 512
    shutdown_timeout: float = 10.0
    max_header_bytes: int = 16384
    max_headers: int = 100
    linger_timeout: float = 2.0
    """Seconds a connection answered before its request was read whole still reads and
    drops what the client sends (`hook/linger.py`); 0: it closes at once."""
    linger_bytes: int = 0
    """The most bytes read and dropped then; 0: `max_body_bytes`, at least 64 MiB
    (`linger_bytes_for`)."""
    max_message_headers: int = MAX_MESSAGE_HEADERS
    """Entries in a hook request's `message.headers`; beyond it 400 (`wire`)."""
    status_auth: bool = False
    policies: Path = Path("policies")
    watch: bool = True
    directory: str = "sqlite:var/komm.sqlite3"
    spacetimedb_token: str | None = None
    refresh_interval: float = 1.0
    max_staleness: float = 30.0
    spacetimedb_max_message_bytes: int = MAX_MESSAGE_BYTES  # [directory] max_message_bytes
    log_jsonl: str = "var/decisions.jsonl"
    log_jsonl_max_bytes: int = 100 * 1024 * 1024
    log_jsonl_backups: int = 10
    log_sqlite: bool = True
    redact_client_ip: bool = False
    log_spool: str = _LOG.spool
    log_spool_fsync_interval: float = _LOG.fsync_interval
    log_on_spool_error: str = _LOG.on_spool_error
    log_queue_max: int = _LOG.queue_max
    log_spool_keep: float = _LOG.spool_keep
    log_jsonl_max_age: float = 0.0
    log_sqlite_max_age: float = 0.0
    log_sqlite_max_rows: int = 0
    log_max_backlog_records: int = _LOG.max_backlog_records
    log_max_backlog_age: float = _LOG.max_backlog_age
    log_writer_sched_idle: bool = _LOG.writer_sched_idle
    log_spacetimedb: str = ""
    log_spacetimedb_reducer: str = _REDUCER.reducer
    log_spacetimedb_args: str = _REDUCER.args
    log_spacetimedb_batch: int = _REDUCER.batch
    log_spacetimedb_token: str | None = None
    log_spacetimedb_dead_letter: str = _REDUCER.dead_letter
    log_spacetimedb_max_dead_letters: int = _REDUCER.max_dead_letters

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.directory[len("sqlite:"):]) if self.directory.startswith(
            "sqlite:") else None

    def redacted(self) -> dict[str, Any]:
        """The configuration as a dict, safe to print (no token)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for secret in ("token", "spacetimedb_token", "log_spacetimedb_token"):
            if values[secret]:
                values[secret] = "(set)"
        values["policies"] = str(values["policies"])
        return values


_BY_NAME = {o.name: o for o in OPTIONS}


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    only: Collection[str] | None = None,
    check_paths: bool = False,
) -> Config:
    """Defaults ← TOML file ← environment ← overrides (flags); then validate (`only`:
    validate just these options, for commands that use a few, like `eval`;
    `check_paths`: also that the decision log's file and spool can be written, creating
    their directories, as `serve` needs — `config_paths`)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # option name -> where its value came from
    path = path or env.get("KOMM_CONFIG")
    if path:
        values.update(_from_toml(Path(path), problems, origins))
    for _section, _key, env_name, token_option in _TOKEN_FILES:
        given = _BY_NAME[token_option].env
        if env.get(env_name) and given in env:
            problems.append(f"{given} and {env_name} are both set: set one (which token "
                            "is meant is not guessed)")
    for option in OPTIONS:
        if option.env in env:
            values[option.name] = _parse(option, env[option.env], option.env, problems)
            origins[option.name] = option.env
            if option.name == "token":  # a token given outright is not re-read
                values.pop("token_file", None)
    for _section, _key, env_name, token_option in _TOKEN_FILES:
        if env.get(env_name):
            values[token_option] = read_token(Path(env[env_name]), env_name, problems)
            origins[token_option] = env_name
            if token_option == "token":
                values["token_file"] = Path(env[env_name])
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        option = _BY_NAME[name]
        origins[name] = f"--{name.replace('_', '-')}"
        values[name] = _parse(option, value, origins[name], problems)
        if name == "token":
            values.pop("token_file", None)
    config = replace(Config(), **{k: v for k, v in values.items() if v is not None})
    checked = [p for p in validate(config) if only is None or p.split(":")[0] in only]
    if check_paths and not problems and not checked:
        checked = path_problems(config)
    problems.extend(_with_origin(p, origins) for p in checked)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def _with_origin(problem: str, origins: Mapping[str, str]) -> str:
    """`option: reason` (as `validate` words it) with the option named as the operator
    set it: `KOMM_PORT: …`, `--port: …`, `komm.toml [server] port: …`; an option left at
    its default as its TOML key (`[server] port (default): …`)."""
    name, _colon, reason = problem.partition(":")
    option = _BY_NAME.get(name)
    if option is None:
        return problem
    origin = origins.get(name, f"[{option.section}] {option.key} (default)")
    return f"{origin}:{reason}"


def _parse(option: Option, value: Any, origin: str, problems: list[str]) -> Any:
    try:
        parsed = option.parse(value)
    except (TypeError, ValueError) as exc:
        problems.append(f"{origin}: {exc}")
        return None
    largest = limit(option)
    if largest is not None and parsed > largest:
        unit = " seconds" if isinstance(parsed, float) else ""
        problems.append(f"{origin}: {value!r} is too large (at most {int(largest):,}{unit})")
        return None
    return parsed


_TOKEN_FILES = (("server", "token_file", "KOMM_TOKEN_FILE", "token"),
                ("log", "spacetimedb_token_file", "KOMM_LOG_SPACETIMEDB_TOKEN_FILE",
                 "log_spacetimedb_token"),
                ("directory", "token_file", "KOMM_SPACETIMEDB_TOKEN_FILE",
                 "spacetimedb_token"))
"""Options whose value is a file holding a secret: (section, key, environment variable,
the `Config` field that receives the file's text), so a secret need not stand in the TOML
file or the environment."""
_TOKEN_FILE_KEYS = {(section, key): name for section, key, _env, name in _TOKEN_FILES}


def _from_toml(path: Path, problems: list[str], origins: dict[str, str]) -> dict[str, Any]:
    """The options `path` sets, each one's origin (`FILE [section] key`) in `origins`."""
    try:
        data = loads_toml(read_utf8(path))
    except OSError as exc:
        problems.append(f"{path}: {exc.strerror or exc}")
        return {}
    except NotUtf8Error as exc:
        problems.append(str(exc))
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(toml_error_text(path, exc))
        return {}
    by_key = {(o.section, o.key): o for o in OPTIONS}
    values: dict[str, Any] = {}
    for section, key, _env, token_option in _TOKEN_FILES:
        table = data.get(section)
        given = _BY_NAME[token_option]
        if isinstance(table, dict) and key in table and given.key in table:
            problems.append(f"{path} [{section}]: {given.key} and {key} are both set: set "
                            "one (which token is meant is not guessed)")
    for section, table in data.items():
        if not isinstance(table, dict):
            problems.append(f"{path}: `{section}` must be a [section]")
            continue
        for key, value in table.items():
            token_option = _TOKEN_FILE_KEYS.get((section, key))
            if token_option is not None:
                origin = f"{path} [{section}] {key}"
                if isinstance(value, str):
                    values[token_option] = read_token(Path(value), origin, problems)
                    origins[token_option] = origin
                    if token_option == "token":
                        values["token_file"] = Path(value)
                else:
                    problems.append(f"{origin}: expected a path, got {value!r}")
                continue
            option = by_key.get((section, key))
            if option is None:
                known = ", ".join([f"[{o.section}] {o.key}" for o in OPTIONS]
                                  + [f"[{s}] {k}" for s, k, _e, _o in _TOKEN_FILES])
                problems.append(f"{path}: unknown option [{section}] {key} (known: {known})")
                continue
            origins[option.name] = f"{path} [{section}] {key}"
            values[option.name] = _parse(option, value, origins[option.name], problems)
    return values


def validate(config: Config) -> list[str]:
    problems = []
    if not config.host:
        problems.append("host: must not be empty")
    if not 0 <= config.port <= 65535:
        problems.append(f"port: {config.port} is not a TCP port (0-65535)")
    if config.workers < 1:
        problems.append(f"workers: must be at least 1, got {config.workers}")
    if config.token is not None and not config.token.strip():
        problems.append("token: must not be empty when set")
    for name in ("token", "spacetimedb_token", "log_spacetimedb_token"):
        secret = getattr(config, name)
        problem = token_alphabet_problem(secret) if secret and secret.strip() else None
        if problem is not None:
            problems.append(f"{name}: {problem}")
    if config.max_body_bytes < 1024:
        problems.append(f"max_body_bytes: {config.max_body_bytes} is too small (min 1024)")
    if 0 < config.max_body_buffer_bytes < config.max_body_bytes or (
            config.max_body_buffer_bytes < 0):
        problems.append(f"max_body_buffer_bytes: {config.max_body_buffer_bytes} is less than "
                        f"max_body_bytes ({config.max_body_bytes}): a body of the largest "
                        "size could never be read (0: 4 x max_body_bytes)")
    for name in ("header_timeout", "body_timeout", "idle_timeout", "write_timeout"):
        if not getattr(config, name) > 0:
            problems.append(f"{name}: must be positive, got {getattr(config, name)}")
    if config.shutdown_timeout < 0:
        problems.append(f"shutdown_timeout: must not be negative, got {config.shutdown_timeout}")
    if config.max_connections < 0:
        problems.append(f"max_connections: must not be negative (0: automatic), got "
                        f"{config.max_connections}")
    if config.max_concurrency < 1:
        problems.append(f"max_concurrency: must be at least 1, got {config.max_concurrency}")
    if config.max_header_bytes < 1024:
        problems.append(f"max_header_bytes: {config.max_header_bytes} is too small (min 1024)")
    if config.linger_timeout < 0:
        problems.append(f"linger_timeout: must not be negative (0: no lingering), got "
                        f"{config.linger_timeout}")
    if config.linger_bytes < 0:
        problems.append(f"linger_bytes: must not be negative (0: max_body_bytes, at least "
                        f"64 MiB), got {config.linger_bytes}")
    if config.max_headers < 8:
        problems.append(f"max_headers: {config.max_headers} is too small (min 8)")
    if config.max_message_headers < 1:
        problems.append(f"max_message_headers: must be at least 1, got "
                        f"{config.max_message_headers}")
    if config.status_auth and not config.token:
        problems.append("status_auth: needs a token (token, token_file, KOMM_TOKEN)")
    if not config.policies.is_dir():
        problems.append(f"policies: {config.policies} is not a directory")
    elif not any(config.policies.glob("*.policy")):
        problems.append(f"policies: {config.policies} holds no *.policy files")
    scheme = config.directory.split(":", 1)[0]
    if scheme == "sqlite":
        sqlite_path = config.sqlite_path
        if not config.directory[len("sqlite:"):].strip():
            problems.append("directory: sqlite: needs a path, e.g. sqlite:var/komm.sqlite3")
        elif sqlite_path is not None and sqlite_path.is_dir():
            problems.append(f"directory: {sqlite_path} is a directory, not a database file")
        elif sqlite_path is not None and not sqlite_path.exists():
            problems.append(f"directory: {sqlite_path} does not exist (create it with "
                            f"`komm-policy db init --path {sqlite_path}`)")
    elif scheme.startswith("spacetimedb"):
        from .spacetimedb.http import Endpoint
        try:
            Endpoint.parse(config.directory)
        except ValueError as exc:
            problems.append(f"directory: {exc}")
    elif config.directory not in ("memory:demo", "memory:empty"):
        problems.append(f"directory: unknown directory {config.directory!r} (use "
                        "sqlite:PATH, spacetimedb://HOST:PORT/DB, memory:demo or "
                        "memory:empty)")
    if config.refresh_interval <= 0:
        problems.append("refresh_interval: must be positive")
    if config.max_staleness < config.refresh_interval:
        problems.append("max_staleness: must be at least refresh_interval")
    if config.spacetimedb_max_message_bytes < MESSAGE_BYTES_MIN:
        problems.append(f"spacetimedb_max_message_bytes: {config.spacetimedb_max_message_bytes} is too small (min {MESSAGE_BYTES_MIN:,}: 1 MiB)")  # noqa: E501
    if config.log_jsonl_max_bytes < 1024:
        problems.append("log_jsonl_max_bytes: too small (min 1024)")
    if config.log_jsonl_backups < 0:
        problems.append("log_jsonl_backups: must not be negative")
    if config.log_on_spool_error not in ("tempfail", "accept"):
        problems.append(f"log_on_spool_error: {config.log_on_spool_error!r} is not tempfail "
                        "or accept")
    if not config.log_spool.strip():
        problems.append("log_spool: must not be empty")
    for name in ("log_spool_fsync_interval", "log_queue_max", "log_spool_keep",
                 "log_jsonl_max_age", "log_sqlite_max_age", "log_sqlite_max_rows",
                 "log_max_backlog_records", "log_max_backlog_age"):
        if getattr(config, name) < 0:
            problems.append(f"{name}: must not be negative")
    problems.extend(_validate_log_spacetimedb(config))
    return problems


def _validate_log_spacetimedb(config: Config) -> list[str]:
    if not config.log_spacetimedb:
        return []
    from .spacetimedb.http import Endpoint
    problems = []
    try:
        Endpoint.parse(config.log_spacetimedb)
    except ValueError as exc:
        problems.append(f"log_spacetimedb: {exc}")
    if not config.log_spacetimedb_reducer.strip():
        problems.append("log_spacetimedb_reducer: must not be empty")
    if config.log_spacetimedb_args not in ("batch", "record"):
        problems.append(f"log_spacetimedb_args: {config.log_spacetimedb_args!r} is not batch "
                        "or record")
    if config.log_spacetimedb_batch < 1:
        problems.append("log_spacetimedb_batch: must be at least 1")
    if not config.log_spacetimedb_dead_letter.strip():
        problems.append("log_spacetimedb_dead_letter: must not be empty")
    if config.log_spacetimedb_max_dead_letters < 0:
        problems.append("log_spacetimedb_max_dead_letters: must not be negative (0: block "
                        "at the first refusal)")
    return problems
