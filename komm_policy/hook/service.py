"""The running service's state: active policy set, directory, decision log, metrics.

Built from a `Config` (or from parts, in tests).  The policy set is swapped atomically by
`reload()`: a request takes the current set once and finishes on it, and a reload that
fails keeps the old set, logs the diagnostics and counts a failed reload.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..config_tokens import token_text_problem
from ..decisionlog import (
    DecisionLog,
    JsonlSpec,
    LogSettings,
    ReducerSpec,
    SinkSpec,
    SqliteSpec,
)
from ..decisionlog.metrics import register_log_metrics
from ..decisionlog.settings import CONFIGURED
from ..demo import DEMO_TABLES
from ..directory import Directory, DirectoryError
from ..directory.memory import InMemoryDirectory
from ..directory.schema import Schema
from ..directory.spacetimedb import SpacetimeDirectory
from ..directory.sqlite import SqliteDirectory
from ..errors import render
from ..policyset import (
    LoadResult,
    PolicySet,
    load_path,
    read_sources,
    retire_set,
    schema_beside,
    version_of,
)
from ..spacetimedb.http import Endpoint
from ..wire import MAX_MESSAGE_HEADERS
from .metrics import Metrics

log = logging.getLogger("komm_policy.service")

RETRY_WAITING_SECONDS = 5.0
"""How often a compiled policy set that the store cannot serve yet (a table or column it
reads is missing) is offered to the directory again: a failed offer is one schema read."""
DO_NOT_COMPILE = "the policies on disk do not compile"
RETIRED_RETRY_SECONDS = 0.5
"""How often a replaced set that a request still decided on when the reload ended is
looked at again (`free_retired`): it is frozen, only `retire_set` frees its cycles."""


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    version: str | None
    messages: tuple[str, ...] = ()


@dataclass
class HookService:
    policy_set: PolicySet
    directory: Directory
    policies_path: Path | None = None
    decision_log: DecisionLog | None = None
    token: str | None = None
    token_file: Path | None = None
    """The file `token` came from: re-read by `reload_token` (SIGHUP)."""
    max_body_bytes: int = 64 * 1024 * 1024
    max_body_buffer_bytes: int = 4 * 64 * 1024 * 1024
    """Bytes of request bodies held at once (`bodybudget`)."""
    max_message_headers: int = MAX_MESSAGE_HEADERS
    """Entries in `message.headers` a request may carry (`wire.decode_request`)."""
    shadow: bool = False
    status_auth: bool = False
    redact_client_ip: bool = False
    watch: bool = False
    metrics: Metrics = field(default_factory=Metrics)
    reload_problem: str | None = None
    """The first diagnostic of the last failed reload, while the files on disk stay broken
    and an older set serves (`/readyz` reports "degraded")."""
    reload_reason: str | None = None
    """`/readyz`'s reason while `reload_problem` is set: the files do not compile, or
    they compile but the store lacks what they read (then `waiting_set` is kept)."""
    waiting_set: PolicySet | None = None
    """The compiled set from disk the directory refused (a table or column missing): tried
    again every `retry_after` seconds and on every reload, without compiling it again,
    until the store has what it reads or the files change."""
    freeze_sets: bool = False
    """Build policy sets frozen (`compile_sources(frozen=True)`; `gc.freeze` takes every
    object of the process): only `serve`'s process, never a test run's services."""
    _reload_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _retired: list[PolicySet] = field(default_factory=list, repr=False)
    """Replaced sets waiting for the requests deciding on them (`_free_retired`)."""
    token_listeners: list[Callable[[str], None]] = field(default_factory=list, repr=False)
    """Called with the new token when `reload_token` changes it (the app's check)."""

    def __post_init__(self) -> None:
        families = getattr(self.directory, "metric_families", None)
        if families is not None:
            self.metrics.registry.register(_Collector(families))
        require_tables(self.directory, self.policy_set)
        self.metrics.watch_directory(self.directory)
        if self.decision_log is not None:
            log_ref = self.decision_log
            self.metrics.log_depth.set_function(lambda: float(log_ref.depth))
            register_log_metrics(self.metrics.registry, log_ref)
        self.metrics.rules.set(self.policy_set.rule_count)

    @property
    def ready(self) -> tuple[bool, str]:
        available = getattr(self.directory, "available", True)
        if not available:
            return False, getattr(self.directory, "unavailable_reason",
                                  "directory unavailable")
        if self.decision_log is not None:
            problem = self.decision_log.problem()
            if problem is not None:
                return False, problem
        return True, "ok"

    def reload_token(self) -> bool:
        """Re-read `token_file` (SIGHUP): a new token takes effect for the next request.
        A file unreadable, empty, of several lines or with a character no header carries
        (`token_text_problem`) keeps the token in use and logs an error; False then."""
        if self.token_file is None:
            return True
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
        else:
            problem = token_text_problem(token)
            if problem is None:
                if token != self.token:
                    self.token = token
                    for listener in self.token_listeners:
                        listener(token)
                    log.info("token re-read from %s: a new token is in use", self.token_file)
                return True
        log.error("token file %s %s; keeping the token in use", self.token_file, problem)
        return False

    @property
    def retry_after(self) -> float | None:
        """Seconds until `reload` should run again by itself (a set waits for the
        store), or None: only a signal or a file change asks for one.  While a replaced
        set waits to be freed, `free_retired` is due every `RETIRED_RETRY_SECONDS`."""
        if self.waiting_set is not None:
            return RETRY_WAITING_SECONDS
        return RETIRED_RETRY_SECONDS if self._retired else None

    def reload(self) -> ReloadResult:
        """Recompile the policies; swap them in only if they compile and the directory
        has every table and column they read.  A set refused only for the store is kept
        (`waiting_set`) and offered again, uncompiled, by the next reload.

        Sets are built frozen with `freeze_sets`; a set this replaces or drops is freed
        in slices once no request decides on it (`free_retired`: a frozen set's cycles
        are never collected), here in the reloading thread or by a later call."""
        if self.policies_path is None:
            return ReloadResult(False, None, ("no policy directory configured",))
        with self._reload_lock:
            before, built = self._live_sets(), []
            try:
                return self._reload(self.policies_path, built)
            finally:
                self._retire((*before, *built))
                del before, built
                self._free_retired()

    def _live_sets(self) -> tuple[PolicySet, ...]:  # the serving and the waiting set
        return tuple(s for s in (self.policy_set, self.waiting_set) if s is not None)

    def _retire(self, candidates: tuple[PolicySet, ...]) -> None:
        """Queue the sets of `candidates` that are neither serving nor waiting."""
        keep = self._live_sets()
        for candidate in candidates:
            if not any(candidate is s for s in (*keep, *self._retired)):
                self._retired.append(candidate)

    def free_retired(self) -> int:
        """Free, in slices (`retire_set`), the replaced sets no request holds any more
        (a request holds its set for its decision); the others stay queued, and
        `retry_after` asks for another look.  Returns the sets still queued.  Runs in
        a worker thread: freeing a large set takes a while (never the lock for long)."""
        with self._reload_lock:
            return self._free_retired()

    def _free_retired(self) -> int:
        for i in range(len(self._retired) - 1, -1, -1):
            # Held only by the list (and getrefcount's argument): no request uses it.
            if sys.getrefcount(self._retired[i]) <= 2:
                freed = retire_set([self._retired.pop(i)])
                log.debug("replaced policy set freed: %d objects", freed)
        return len(self._retired)

    def _reload(self, policies_path: Path, built: list[PolicySet]) -> ReloadResult:
        """`reload`'s work under its lock; `built` receives the set compiled, if any."""
        try:
            sources, problems = read_sources(policies_path)
            schema_text = schema_beside(policies_path)[1]
            version = None if problems else version_of(sources, schema_text)
            if version == self.policy_set.version:
                log.info("policies unchanged: version %s", self.policy_set.version)
                self._refused(None, None)
                return ReloadResult(True, self.policy_set.version)
            waiting = self.waiting_set
            result = (LoadResult(waiting, ()) if waiting is not None
                      and waiting.version == version
                      else load_path(policies_path, frozen=self.freeze_sets))
            if result.policy_set is not None:
                built.append(result.policy_set)
                try:  # the directory indexes what the new set reads before it goes live
                    require_tables(self.directory, result.policy_set)
                except Exception as exc:
                    return self._wait_for_store(result.policy_set, exc)
        except Exception as exc:  # a reload must never take the reloader down
            self.metrics.reloads.labels("failed").inc()
            message = f"policy reload failed: {type(exc).__name__}: {exc}"
            log.error(message)
            self._refused(message, "the policies on disk could not be loaded")
            return ReloadResult(False, None, (message,))
        if result.policy_set is None:
            self.metrics.reloads.labels("failed").inc()
            messages = tuple(render(d, result.texts.get(d.span.file))
                             for d in result.diagnostics)
            log.error("policy reload failed; keeping version %s:\n%s",
                      self.policy_set.version, "\n".join(messages))
            self._refused(str(result.errors[0]) if result.errors
                          else "policy reload failed", DO_NOT_COMPILE)
            return ReloadResult(False, None, messages)
        self._refused(None, None)
        if result.policy_set.version != self.policy_set.version:
            self.policy_set = result.policy_set  # one reference swap: atomic
            log.info("policies reloaded: version %s, %d rules",
                     result.policy_set.version, result.policy_set.rule_count)
        else:
            log.info("policies unchanged: version %s", self.policy_set.version)
        self.metrics.reloads.labels("ok").inc()
        self.metrics.rules.set(self.policy_set.rule_count)
        for warning in result.warnings:
            log.warning("%s", render(warning, result.texts.get(warning.span.file)))
        return ReloadResult(True, self.policy_set.version)

    def _refused(self, problem: str | None, reason: str | None) -> None:
        self.reload_problem, self.reload_reason, self.waiting_set = problem, reason, None

    def _wait_for_store(self, policy_set: PolicySet, exc: Exception) -> ReloadResult:
        """Keep a compiled set the directory refused; log and count it once per reason
        (it is offered again every `RETRY_WAITING_SECONDS`)."""
        detail = str(exc) if isinstance(exc, DirectoryError) else f"{type(exc).__name__}: {exc}"
        message = f"policy reload waits for the directory: {detail}"
        if self.waiting_set is None or message != self.reload_problem:
            self.metrics.reloads.labels("failed").inc()
            log.error("%s; keeping version %s, trying version %s again every %g s",
                      message, self.policy_set.version, policy_set.version,
                      RETRY_WAITING_SECONDS)
        self.reload_problem, self.waiting_set = message, policy_set
        self.reload_reason = ("the policies on disk read a table or column the directory "
                              "lacks (tried again every "
                              f"{RETRY_WAITING_SECONDS:g} s)")
        return ReloadResult(False, None, (message,))

    def close(self) -> None:
        if self.decision_log is not None:
            self.decision_log.close()
        close_directory(self.directory)

    @classmethod
    def from_config(cls, config: Config, *, worker: str | None = None,
                    freeze_sets: bool = False) -> HookService:
        """Open everything the configuration names (`freeze_sets`: see the field).
        Raises on unusable parts."""
        result = load_path(config.policies, frozen=freeze_sets)
        if result.policy_set is None:
            raise RuntimeError(f"the policies in {config.policies} have errors:\n"
                               + result.render(result.errors))
        directory = open_directory(config)
        sinks: list[SinkSpec] = []
        if config.log_jsonl:
            path = Path(config.log_jsonl)
            if worker is not None:
                path = path.with_name(f"{path.stem}.{worker}{path.suffix}")
            sinks.append(JsonlSpec(str(path.resolve()), config.log_jsonl_max_bytes,
                                   config.log_jsonl_backups, config.log_jsonl_max_age))
        if config.log_sqlite and config.sqlite_path is not None:
            sinks.append(SqliteSpec(str(config.sqlite_path.resolve()),
                                    config.log_sqlite_max_age, config.log_sqlite_max_rows))
        if config.log_spacetimedb:
            sinks.append(reducer_spec(config, worker))
        decision_log: DecisionLog | None = None
        try:
            # The log starts its writer process: a service that then fails to start (a
            # table the policies read is missing) must stop it, or the interpreter's exit
            # waits for a writer that waits for this process (a hung `serve`).
            if sinks:
                decision_log = DecisionLog(sinks, log_settings(config, worker))
            return cls(
                policy_set=result.policy_set,
                directory=directory,
                policies_path=config.policies,
                decision_log=decision_log,
                token=config.token,
                token_file=config.token_file,
                max_body_bytes=config.max_body_bytes,
                max_body_buffer_bytes=config.max_body_buffer_bytes or 4 * config.max_body_bytes,
                max_message_headers=config.max_message_headers,
                shadow=config.shadow,
                status_auth=config.status_auth,
                redact_client_ip=config.redact_client_ip,
                watch=config.watch,
                freeze_sets=freeze_sets,
            )
        except BaseException:
            if decision_log is not None:
                decision_log.close()
            close_directory(directory)
            raise


def reducer_spec(config: Config, worker: str | None = None) -> ReducerSpec:
    """The SpacetimeDB reducer sink of `[log] spacetimedb`; each worker has its own
    dead-letter file.  Without its own token the log uses the directory's token, but only
    when both name the same server (a token never goes to another host)."""
    from ..spacetimedb.http import Endpoint
    dead = Path(config.log_spacetimedb_dead_letter)
    if worker is not None:
        dead = dead.with_name(f"{dead.stem}.{worker}{dead.suffix}")
    token = config.log_spacetimedb_token
    if token is None and config.spacetimedb_token and config.directory.startswith(
            "spacetimedb"):
        with contextlib.suppress(ValueError):
            if (Endpoint.parse(config.directory).base
                    == Endpoint.parse(config.log_spacetimedb).base):
                token = config.spacetimedb_token
    return ReducerSpec(url=config.log_spacetimedb, reducer=config.log_spacetimedb_reducer,
                       args=config.log_spacetimedb_args,  # type: ignore[arg-type]
                       batch=config.log_spacetimedb_batch, token=token or "",
                       dead_letter=str(dead.resolve()),
                       max_dead_letters=config.log_spacetimedb_max_dead_letters)


def log_settings(config: Config, worker: str | None = None) -> LogSettings:
    """The decision log's settings; with several workers each has its own spool."""
    spool = Path(config.log_spool)
    if worker is not None:
        spool = spool / f"worker-{worker}"
    values = {name: getattr(config, option) for name, option in CONFIGURED.items()}
    return LogSettings(**{**values, "spool": str(spool.resolve())})


def require_tables(directory: Directory, policy_set: PolicySet) -> None:
    """Have the directory replicate and index the tables the policy set reads.  Raises
    `DirectoryError` when the store lacks one (the set must not go live)."""
    require = getattr(directory, "require", None)
    if require is not None and (policy_set.needs or policy_set.schema is not None):
        require(policy_set.schema or Schema({}), policy_set.needs)


def close_directory(directory: Directory) -> None:
    """Stop a directory's background work, for backends that have any."""
    close = getattr(directory, "close", None)
    if close is not None:
        close()


class _Collector:
    """Adapts a directory's `metric_families()` to prometheus_client's collector API."""

    def __init__(self, families: Callable[[], Iterable[Any]]) -> None:
        self.families = families

    def collect(self) -> Iterable[Any]:
        return self.families()


def open_directory(config: Config) -> Directory:
    if config.directory.startswith("spacetimedb"):
        return SpacetimeDirectory(Endpoint.parse(config.directory), config.spacetimedb_token,
                                  max_staleness=config.max_staleness,
                                  max_message_bytes=config.spacetimedb_max_message_bytes)
    if config.sqlite_path is not None:
        return SqliteDirectory(config.sqlite_path, refresh_interval=config.refresh_interval,
                               max_staleness=config.max_staleness)
    if config.directory == "memory:demo":
        return InMemoryDirectory(DEMO_TABLES)
    if config.directory == "memory:empty":
        return InMemoryDirectory()
    raise ValueError(f"unknown directory {config.directory!r} (use sqlite:PATH, memory:demo "
                     "or memory:empty)")
