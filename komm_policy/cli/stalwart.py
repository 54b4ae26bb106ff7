"""`komm-policy stalwart-config`: the Stalwart configuration that points at this service.

Prints both forms (see the wire reference §8): the `[session.hook."<id>"]` TOML of
Stalwart up to 0.15 (where `enable` defaults to false and only Basic auth exists) and the
`MtaHook` JSON object of 0.16 and later (stages as a map of booleans, timeout in
milliseconds, Bearer auth).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from ..wire import STAGES

DEFAULT_STAGES = ("connect", "ehlo", "mail", "rcpt", "data")


def register(sub: Any) -> None:
    parser = sub.add_parser("stalwart-config", help="print the Stalwart hook configuration",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3002/mta-hook",
                        help="where Stalwart reaches this service")
    parser.add_argument("--token", help="the token configured with `serve --token` / "
                                        "KOMM_TOKEN")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help="comma-separated stages (default: connect,ehlo,mail,rcpt,data; "
                             "Stalwart never calls auth)")
    parser.add_argument("--id", default="komm", help="hook id in the TOML form")
    parser.add_argument("--timeout", default="5s",
                        help="Stalwart's timeout for one hook call (e.g. 5s, 1500ms)")
    parser.add_argument("--format", choices=("both", "toml", "json"), default="both")
    parser.set_defaults(run=run)


def _timeout_ms(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]+)\s*(ms|s|m)?\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 5s or 1500ms)")
    number, unit = int(match.group(1)), match.group(2) or "s"
    if number == 0:
        raise ValueError("the timeout must be positive")
    return number * {"ms": 1, "s": 1000, "m": 60000}[unit]


def _duration_text(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes, plus DEL, which TOML forbids raw)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def toml_config(url: str, token: str | None, stages: list[str], hook_id: str,
                timeout_ms: int) -> str:
    name = _toml_string(hook_id)
    lines = [
        "# Stalwart up to 0.15: add to config.toml (or set the same keys in the web admin).",
        "# `enable` defaults to false there: without it the hook never runs.",
        "# Before 0.15.0 the rcpt hook also needs a RCPT Sieve script, rewrite or milter",
        "# to be configured (stalwart#2317).",
        f"[session.hook.{name}]",
        "enable = true",
        f"url = {_toml_string(url)}",
        "stages = [" + ", ".join(_toml_string(s) for s in stages) + "]",
        f"timeout = {_toml_string(_duration_text(timeout_ms))}",
        "allow-invalid-certs = false",
        "",
        f"[session.hook.{name}.options]",
        "tempfail-on-error = true",
        "max-response-size = 1048576",
    ]
    if token:
        lines += [
            "",
            "# Stalwart 0.15 sends Basic auth only; komm-policy checks the password.",
            f"[session.hook.{name}.auth]",
            'username = "stalwart"',
            f"secret = {_toml_string(token)}",
        ]
    return "\n".join(lines) + "\n"


def json_config(url: str, token: str | None, stages: list[str], timeout_ms: int
                ) -> dict[str, Any]:
    auth: dict[str, Any] = {"@type": "Unauthenticated"}
    if token:
        auth = {"@type": "Bearer", "bearerToken": {"@type": "Value", "secret": token}}
    return {
        "url": url,
        "enable": {"else": "true"},
        "stages": {stage: True for stage in stages},
        "timeout": timeout_ms,
        "allowInvalidCerts": False,
        "tempFailOnError": True,
        "maxResponseSize": 1048576,
        "httpAuth": auth,
        "httpHeaders": {},
    }


def run(args: argparse.Namespace) -> int:
    stages = [s.strip().lower() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        print(f"komm-policy stalwart-config: unknown stage(s) {', '.join(unknown) or '(none)'};"
              f" choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if "auth" in stages:
        print("komm-policy stalwart-config: note: Stalwart never calls the auth stage",
              file=sys.stderr)
    try:
        timeout_ms = _timeout_ms(args.timeout)
    except ValueError as exc:
        print(f"komm-policy stalwart-config: {exc}", file=sys.stderr)
        return 2
    if args.format in ("both", "toml"):
        print(toml_config(args.url, args.token, stages, args.id, timeout_ms), end="")
    if args.format == "both":
        print()
        print("# Stalwart 0.16 and later: an MtaHook object (Settings > MTA > Filters > MTA "
              "Hooks,")
        print("# or JMAP x:MtaHook/set):")
    if args.format in ("both", "json"):
        print(json.dumps(json_config(args.url, args.token, stages, timeout_ms), indent=2))
    return 0
