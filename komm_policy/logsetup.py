"""The service's log lines: one format, our loggers at the operator's level, libraries quiet.

httpx logs an INFO line for every HTTP request it makes (`HTTP Request: POST …/call/…
"HTTP/1.1 200 OK"`): one per reducer call of the SpacetimeDB decision-log sink, one per
HTTP call of the SpacetimeDB replica.  Those libraries' loggers (`LIBRARY_LOGGERS`) stay at
WARNING unless the operator asks for `--log-level debug`; what matters is in our own lines
(a sink failing and delivering again, the replica unavailable and recovered).

The level travels to the processes the service starts (the decision-log writer, `--workers`
workers) in `KOMM_LOG_LEVEL`, as the rest of the configuration does in `KOMM_*`.
"""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("critical", "error", "warning", "info", "debug")
LIBRARY_LOGGERS = ("httpx", "httpcore", "websockets")
LEVEL_VARIABLE = "KOMM_LOG_LEVEL"


def configure_logging(level: str | None = None) -> str:
    """Set up the root logger (`level`, default `KOMM_LOG_LEVEL`, else info) and the
    libraries' loggers (WARNING, DEBUG with `debug`); export the level for processes
    started later.  Returns the level used.  An unknown level is treated as info."""
    chosen = (level or os.environ.get(LEVEL_VARIABLE) or "info").lower()
    if chosen not in LEVELS:
        chosen = "info"
    logging.basicConfig(level=chosen.upper(), format=FORMAT)
    libraries = logging.DEBUG if chosen == "debug" else logging.WARNING
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(libraries)
    os.environ[LEVEL_VARIABLE] = chosen
    return chosen
