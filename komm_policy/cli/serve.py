"""`komm-policy serve`: run the hook service under uvicorn.

Configuration comes from `--config komm.toml`, `KOMM_*` environment variables and the
flags below, in increasing precedence; it is validated before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import OPTIONS, Config, ConfigError, load_config
from ..logsetup import LEVEL_VARIABLE, LEVELS, configure_logging

if TYPE_CHECKING:
    from ..hook.server import ServerLimits


_OPTIONS = {o.name: o for o in OPTIONS}
_TOKEN_FILE_VARIABLES = ("KOMM_TOKEN_FILE", "KOMM_SPACETIMEDB_TOKEN_FILE",
                         "KOMM_LOG_SPACETIMEDB_TOKEN_FILE")
_LIMIT_FLAGS = (("header_timeout", float, "SECONDS"), ("body_timeout", float, "SECONDS"),
                ("idle_timeout", float, "SECONDS"),
                ("write_timeout", float, "SECONDS"), ("max_connections", int, "N"),
                ("max_concurrency", int, "N"), ("shutdown_timeout", float, "SECONDS"),
                ("max_header_bytes", int, "BYTES"), ("max_headers", int, "N"),
                ("max_body_buffer_bytes", int, "BYTES"), ("linger_timeout", float, "SECONDS"),
                ("linger_bytes", int, "BYTES"))


def register(sub: Any) -> None:
    parser = sub.add_parser("serve", help="run the MTA-hook service",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE", help="komm.toml (or KOMM_CONFIG)")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 3002)")
    parser.add_argument("--policies", metavar="DIR", help="policy directory (default policies)")
    parser.add_argument("--directory", metavar="URL",
                        help="sqlite:PATH (default sqlite:var/komm.sqlite3), "
                             "spacetimedb://HOST:PORT/DB, spacetimedb+https://HOST/DB, "
                             "memory:demo, memory:empty")
    parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    parser.add_argument("--token", help="require this token (prefer KOMM_TOKEN or "
                                        "KOMM_TOKEN_FILE: flags are visible to other users)")
    parser.add_argument("--shadow", action="store_true", default=None,
                        help="answer accept to everything; log the real decision")
    parser.add_argument("--no-watch", dest="watch", action="store_false", default=None,
                        help="do not reload policies on file changes (SIGHUP still works)")
    parser.add_argument("--log-jsonl", metavar="PATH",
                        help="decision log file (default var/decisions.jsonl; '' disables)")
    parser.add_argument("--log-spool", metavar="DIR",
                        help=f"{_OPTIONS['log_spool'].help}: one per running service "
                             f"({_OPTIONS['log_spool'].env}; default {Config().log_spool})")
    parser.add_argument("--log-spacetimedb-max-dead-letters", metavar="N",  # checked as config
                        help=f"{_OPTIONS['log_spacetimedb_max_dead_letters'].help} "
                             f"({_OPTIONS['log_spacetimedb_max_dead_letters'].env}; default "
                             f"{Config().log_spacetimedb_max_dead_letters})")
    parser.add_argument("--spacetimedb-max-message-bytes", metavar="BYTES",  # checked as config
                        help=f"{_OPTIONS['spacetimedb_max_message_bytes'].help} "
                             f"({_OPTIONS['spacetimedb_max_message_bytes'].env}; default "
                             f"{Config().spacetimedb_max_message_bytes})")
    parser.add_argument("--redact-client-ip", action="store_true", default=None,
                        help="leave client IPs out of the decision log")
    for name, kind, metavar in _LIMIT_FLAGS:
        option = _OPTIONS[name]
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=metavar,
                            help=f"{option.help} ({option.env}; default "
                                 f"{getattr(Config(), name)})")
    parser.add_argument("--status-auth", action="store_true", default=None,
                        help=_OPTIONS["status_auth"].help)
    parser.add_argument("--log-level", choices=LEVELS,
                        help=f"least severe log messages shown ({LEVEL_VARIABLE}; default "
                             "info)")
    parser.set_defaults(run=run)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `Config` fields the flags set (None: not given), for `load_config`."""
    return {name: getattr(args, name, None) for name in (
        "host", "port", "policies", "directory", "workers", "token", "shadow", "watch",
        "log_jsonl", "log_spool", "log_spacetimedb_max_dead_letters", "redact_client_ip",
        "spacetimedb_max_message_bytes",
        "status_auth", *(f[0] for f in _LIMIT_FLAGS))}


def log_level(flag: str | None, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The log level (`--log-level`, else `KOMM_LOG_LEVEL`, else info) and the problem
    with the variable's value (None: none); the flag's value argparse has checked."""
    if flag is not None:
        return flag, None
    value = env.get(LEVEL_VARIABLE, "")
    if not value:
        return "info", None
    if value.lower() not in LEVELS:
        return "info", (f"{LEVEL_VARIABLE}: {value!r} is not a log level (one of "
                        f"{', '.join(LEVELS)})")
    return value.lower(), None


def run(args: argparse.Namespace) -> int:
    level, level_problem = log_level(args.log_level, os.environ)
    try:
        config = load_config(args.config, overrides=flag_overrides(args), check_paths=True)
    except ConfigError as exc:
        extra = f"\n  - {level_problem}" if level_problem else ""
        print(f"komm-policy serve: {exc}{extra}", file=sys.stderr)
        return 2
    if level_problem is not None:
        print(f"komm-policy serve: invalid configuration:\n  - {level_problem}",
              file=sys.stderr)
        return 2
    configure_logging(level)  # httpx and friends quiet unless debug
    from ..hook.server import run as run_server
    from ..hook.service import HookService, close_directory, open_directory
    from ..policyset import load_path

    if config.workers > 1:
        # Check here what each worker will load, so a broken policy or store is one clear
        # error instead of workers failing and being restarted over and over.
        try:
            result = load_path(config.policies)
            if result.policy_set is None:
                print(f"komm-policy serve: the policies in {config.policies} have errors:\n"
                      + result.render(result.errors), file=sys.stderr)
                return 2
            close_directory(open_directory(config))
        except Exception as exc:  # report start-up problems plainly
            print(f"komm-policy serve: {exc}", file=sys.stderr)
            return 2
        # Workers are separate processes: they read the validated config from KOMM_*.
        # A token travels once: as its file when it came from one, else as its value
        # (a token and its file both set is refused as ambiguous).
        environment = config_environment(config)
        for name in _TOKEN_FILE_VARIABLES:
            if name not in environment:
                os.environ.pop(name, None)
        os.environ.update(environment)
        log_start(config, result.policy_set.version, result.policy_set.rule_count)
        run_server("komm_policy.hook.factory:app_from_environment", factory=True,
                   host=config.host, port=config.port, workers=config.workers,
                   limits=server_limits(config), log_level=level)
        return 0
    from ..hook.app import create_app

    try:
        service = HookService.from_config(config, freeze_sets=True)
    except Exception as exc:
        print(f"komm-policy serve: {exc}", file=sys.stderr)
        return 2
    log_start(config, service.policy_set.version, service.policy_set.rule_count)
    run_server(create_app(service), host=config.host, port=config.port,
               limits=server_limits(config), log_level=level)
    return 0


def log_start(config: Config, version: str, rules: int) -> None:
    """What an operator checks first: which policies, which directory, which mode."""
    log = logging.getLogger("komm_policy")
    log.info("serving policies %s (version %s, %d rules) with directory %s on "
             "http://%s:%d/mta-hook%s", config.policies, version, rules, config.directory,
             config.host, config.port,
             f" in {config.workers} worker processes" if config.workers > 1 else "")
    if config.shadow:
        log.warning("shadow mode: every hook is answered accept; the decisions are only "
                    "logged")


def server_limits(config: Config) -> ServerLimits:
    """The connection timeouts and limits of the configuration."""
    from ..hook.server import ServerLimits

    return ServerLimits(header_timeout=config.header_timeout, body_timeout=config.body_timeout,
                        idle_timeout=config.idle_timeout,
                        write_timeout=config.write_timeout,
                        max_connections=config.max_connections,
                        max_concurrency=config.max_concurrency,
                        shutdown_timeout=config.shutdown_timeout,
                        max_header_bytes=config.max_header_bytes,
                        max_headers=config.max_headers,
                        linger_timeout=config.linger_timeout,
                        linger_bytes=linger_bytes_for(config))


LINGER_BYTES_FLOOR = 64 * 1024 * 1024
"""The least `linger_bytes` defaults to: the default `max_body_bytes`, so a 413 for a body
somewhat over a lowered limit is still read (the time bound acts too)."""


def linger_bytes_for(config: Config) -> int:
    """`linger_bytes`, or when 0 (the default) the largest body the service takes
    (`max_body_bytes`), at least `LINGER_BYTES_FLOOR`: a body Stalwart sends that was
    answered before it was read (401, the budget's 503) is read whole, whatever the
    operator set the body limit to."""
    return config.linger_bytes or max(config.max_body_bytes, LINGER_BYTES_FLOOR)


def config_environment(config: Config) -> dict[str, str]:
    """The configuration as KOMM_* variables (for worker processes)."""
    env = {}
    for option in OPTIONS:
        value = getattr(config, option.name)
        if value is None or (option.name == "token" and config.token_file is not None):
            continue
        env[option.env] = str(value).lower() if isinstance(value, bool) else str(value)
    if config.token_file is not None:  # so a worker, too, knows where to re-read it
        env["KOMM_TOKEN_FILE"] = str(config.token_file)  # (and reads the token there)
    return env
