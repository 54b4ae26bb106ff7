"""`komm-policy stalwart-config`: the Stalwart configuration that points at this service.

Prints one of two forms per run (see the wire reference §8): the `[session.hook."<id>"]` TOML of
Stalwart up to 0.15 (where `enable` defaults to false and only Basic auth exists) and the
`MtaHook` JSON object of 0.16 and later (stages as a map of booleans, timeout in
milliseconds, Bearer auth).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..wire import STAGES

DEFAULT_STAGES = ("connect", "ehlo", "mail", "rcpt", "data")
MAX_TIMEOUT_MS = 86_400_000
"""The longest `--timeout` (a day), as the service's own timeouts (README, Configuration)."""


def register(sub: Any) -> None:
    parser = sub.add_parser("stalwart-config", help="print the Stalwart hook configuration",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3002/mta-hook",
                        help="where Stalwart reaches this service: an http:// or https:// URL "
                             "(default http://127.0.0.1:3002/mta-hook)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--token", help="print this token into the configuration (prefer "
                                        "--token-env or --token-file)")
    secret.add_argument("--token-env", metavar="VAR",
                        help="Stalwart reads the token from its environment variable VAR "
                             "(0.15: %%{env:VAR}%%; 0.16: an EnvironmentVariable secret)")
    secret.add_argument("--token-file", metavar="PATH",
                        help="Stalwart reads the token from the file PATH (0.15: "
                             "%%{file:PATH}%%; 0.16: a File secret); write it without a "
                             "trailing newline")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help="comma-separated stages (default: connect,ehlo,mail,rcpt,data; "
                             "Stalwart never calls auth)")
    parser.add_argument("--id", default="komm", help="hook id in the TOML form (default komm)")
    parser.add_argument("--timeout", default="5s",
                        help="Stalwart's timeout for one hook call (e.g. 5s, 1500ms; "
                             "default 5s)")
    parser.add_argument("--format", choices=("toml", "json"), default="toml",
                        help="toml: the [session.hook] table of Stalwart up to 0.15 "
                             "(default); json: the MtaHook object of Stalwart 0.16 and later")
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class Secret:
    """How the configuration names the token: its value, an environment variable or a
    file (reference §8: 0.15 TOML macros, 0.16 `SecretKey`)."""

    value: str | None = None
    env: str | None = None
    file: str | None = None

    def toml(self) -> str:
        if self.env is not None:
            return _toml_string(f"%{{env:{self.env}}}%")
        if self.file is not None:
            return _toml_string(f"%{{file:{self.file}}}%")
        return _toml_string(self.value or "")

    def json(self) -> dict[str, str]:
        if self.env is not None:
            return {"@type": "EnvironmentVariable", "variableName": self.env}
        if self.file is not None:
            return {"@type": "File", "filePath": self.file}
        return {"@type": "Value", "secret": self.value or ""}


# A DNS host name: LDH labels of 1-63 characters, dot-separated (RFC 1123 §2.1); an IDN
# host is written as its A-labels (`xn--…`), the form Stalwart's HTTP client sends.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


_MACRO = re.compile(r"%\{|\}%")
"""Stalwart's configuration macros, `%{env:NAME}%` and `%{file:PATH}%` (wire reference §8,
the 0.15 TOML form): a value holding `%{` is expanded, and a `}%` ends the macro around it,
so neither may appear in what is printed inside or outside one."""
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
"""A `%` not starting a percent-escape (RFC 3986 §2.1: `%` HEXDIG HEXDIG)."""
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""An environment variable name as POSIX shells write one (POSIX.1-2017 §8.1)."""


def check_secret(args: argparse.Namespace) -> str | None:
    """Why `--token-env`, `--token-file` or `--token` cannot be written into the
    configuration, or None: an environment variable name that is not `[A-Za-z_][A-Za-z0-9_]*`,
    a path or token with a macro delimiter (`%{`, `}%`: Stalwart would expand or end a macro
    there), control characters or an empty value."""
    if args.token_env is not None and not ENV_NAME.fullmatch(args.token_env):
        return (f"--token-env {args.token_env!r} is not an environment variable name "
                "(letters, digits and _, not starting with a digit)")
    for flag, value in (("--token-file", args.token_file), ("--token", args.token)):
        if value is None:
            continue
        if not value.strip():
            return f"{flag} must not be empty"
        if any(ord(c) < 0x20 or c == "\x7f" for c in value):
            return f"{flag} {_shown(flag, value)} has control characters"
        if _MACRO.search(value):
            return (f"{flag} {_shown(flag, value)} holds `%{{` or `}}%`, which Stalwart "
                    "reads as a configuration macro")
    return None


def _shown(flag: str, value: str) -> str:
    return "(the token)" if flag == "--token" else repr(value)


def check_url(url: str) -> str | None:
    """Why Stalwart could not call `url` (an http:// or https:// URL with a valid host,
    an optional port 1-65535, no credentials, no fragment, only valid percent-escapes and
    no configuration macro `%{…}%`), or None.  Stalwart POSTs to the URL as given
    (reference §3: nothing is appended), so a malformed one would only fail at the first
    SMTP session."""
    if not url.isascii() or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
        return (f"--url {url!r} has spaces, control or non-ASCII characters (percent-encode "
                "the path; write an IDN host as its xn-- form)")
    if _MACRO.search(url):
        return (f"--url {url!r} holds `%{{` or `}}%`: Stalwart would expand it as a "
                "configuration macro (percent-encode `{` as %7B, `}` as %7D)")
    if _BAD_ESCAPE.search(url):
        return (f"--url {url!r} has a `%` that does not start a percent-escape (%XX, two "
                "hex digits; write `%` itself as %25)")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed `[` of an IPv6 host
        return f"--url {url!r} has an invalid IPv6 address in brackets"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return (f"--url {url!r} is not an http:// or https:// URL (e.g. "
                "http://127.0.0.1:3002/mta-hook)")
    if "@" in parts.netloc:
        return (f"--url {url!r} carries credentials: give the token with --token-env "
                "or --token-file instead")
    if parts.fragment or url.endswith("#"):
        return f"--url {url!r} has a fragment (`#…`), which an HTTP request cannot carry"
    try:
        port = parts.port
    except ValueError:
        return f"--url {url!r} has an invalid port (a number from 1 to 65535)"
    if port == 0:
        return f"--url {url!r} has an invalid port (a number from 1 to 65535)"
    host = parts.hostname or ""
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"--url {url!r} has an invalid IPv6 address in brackets"
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"--url {url!r} has an invalid IPv4 address {host!r}"
    elif not _HOST_NAME.fullmatch(host):
        return f"--url {url!r} has an invalid host name {host!r}"
    return None


def _timeout_ms(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]+)\s*(ms|s|m)?\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 5s or 1500ms)")
    number, unit = int(match.group(1)), match.group(2) or "s"
    if number == 0:
        raise ValueError("the timeout must be positive")
    ms = number * {"ms": 1, "s": 1000, "m": 60000}[unit]
    if ms > MAX_TIMEOUT_MS:
        raise ValueError(f"the timeout {text.strip()} is too long (at most 1 day, 86400s)")
    return ms


def _duration_text(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes, plus DEL, which TOML forbids raw)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def toml_config(url: str, token: Secret | None, stages: list[str], hook_id: str,
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
            f"secret = {token.toml()}",
        ]
    return "\n".join(lines) + "\n"


def json_config(url: str, token: Secret | None, stages: list[str], timeout_ms: int
                ) -> dict[str, Any]:
    auth: dict[str, Any] = {"@type": "Unauthenticated"}
    if token:
        auth = {"@type": "Bearer", "bearerToken": token.json()}
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
    problem = check_url(args.url) or check_secret(args)
    if problem:
        print(f"komm-policy stalwart-config: {problem}", file=sys.stderr)
        return 2
    secret = None
    if args.token or args.token_env or args.token_file:
        secret = Secret(args.token, args.token_env, args.token_file)
    if args.format == "toml":
        print(toml_config(args.url, secret, stages, args.id, timeout_ms), end="")
    else:
        print("komm-policy stalwart-config: an MtaHook object for Stalwart 0.16 and later "
              "(Settings > MTA > Filters > MTA Hooks, or JMAP x:MtaHook/set)", file=sys.stderr)
        print(json.dumps(json_config(args.url, secret, stages, timeout_ms), indent=2))
    return 0
