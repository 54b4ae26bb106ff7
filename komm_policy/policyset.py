"""Loading a policy set: read the files, parse, check, compile into an immutable PolicySet.

A directory's `*.policy` files form one set, in file-name order (`10-…` before `20-…`).
The `PolicySet` carries a content hash as its version; the service swaps whole sets
atomically, so a request runs on exactly one version from start to end.  Loading never
raises on bad policy text: errors come back as diagnostics.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .builtins import DEFAULT_BUILTINS, Builtin
from .checker import check
from .compiler import compile_program
from .directory.schema import Schema, SchemaError, error_position, find_schema, parse_schema
from .directory.snapshot import Needs
from .errors import Diagnostic, PolicyError, Severity, Span, render
from .functions import too_deep
from .gcpause import frozen_build, no_gc_pauses
from .parser import parse
from .program import CompiledStage, RuntimeSettings
from .release import release
from .textfile import NotUtf8Error, loads_toml, read_utf8


@dataclass(frozen=True, slots=True)
class Source:
    """One policy file's text and the name diagnostics use for it."""

    name: str
    text: str


@dataclass(frozen=True)
class PolicySet:
    version: str
    sources: tuple[Source, ...]
    stages: Mapping[str, CompiledStage]
    settings: RuntimeSettings
    warnings: tuple[Diagnostic, ...] = ()
    schema: Schema | None = None
    """The schema file the set was checked against (None: none beside the policies)."""
    needs: Needs = field(default_factory=Needs)
    """The tables and indexes its lookups read: what the directory must build."""

    @property
    def rule_count(self) -> int:
        return sum(len(stage.rules) for stage in self.stages.values())


@dataclass(frozen=True)
class LoadResult:
    """Either a policy set or the diagnostics that prevented one (warnings in both cases)."""

    policy_set: PolicySet | None
    diagnostics: tuple[Diagnostic, ...]
    texts: Mapping[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.is_error)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if not d.is_error)

    def render(self, diagnostics: Sequence[Diagnostic]) -> str:
        """Diagnostics with their source lines, one after the other."""
        return "\n".join(render(d, self.texts.get(d.span.file)) for d in diagnostics)


def compile_sources(
    sources: Sequence[Source], *, builtins: Mapping[str, Builtin] = DEFAULT_BUILTINS,
    schema: Schema | None = None, schema_text: str = "", frozen: bool = False,
) -> LoadResult:
    """Parse, check and compile sources (in the given order) into a policy set, checking
    table lookups against `schema` (`schema_text`, its file's text, joins the version).

    `frozen` (the service): built beside a serving event loop, frozen out of the
    collector's reach (`gcpause.frozen_build`), the intermediate structures freed in
    slices (`release`); free the set itself with `retire_set` when it is replaced."""
    spent: list[Any] = []
    if not frozen:
        with no_gc_pauses():
            return _compile_sources(sources, builtins, schema, schema_text, spent)
    with frozen_build():
        loaded = _compile_sources(sources, builtins, schema, schema_text, spent)
        box = [spent]  # the parse results and the checker's analysis hold cycles
        del spent
        release(box)
        return loaded


def retire_set(box: list[PolicySet]) -> int:
    """Free a policy set built `frozen` that is no longer used (the box holds the only
    reference) in slices, cycles included; returns the objects freed."""
    return release(box)  # type: ignore[arg-type]


def _compile_sources(sources: Sequence[Source], builtins: Mapping[str, Builtin],
                     schema: Schema | None, schema_text: str, spent: list[Any]
                     ) -> LoadResult:
    """`spent` receives the intermediate results (parse results, the analysis)."""
    diagnostics: list[Diagnostic] = []
    files = []
    for source in sources:
        result = parse(source.text, source.name)
        spent.append(result)
        diagnostics.extend(result.diagnostics)
        if result.file is not None:
            files.append(result.file)
    texts = {s.name: s.text for s in sources}
    if any(d.is_error for d in diagnostics):
        return LoadResult(None, tuple(diagnostics), texts)
    analysis = check(files, builtins=builtins, schema=schema)
    spent.append(analysis)
    diagnostics.extend(analysis.diagnostics)
    if analysis.has_errors:
        return LoadResult(None, tuple(diagnostics), texts)
    try:
        stages, settings = compile_program(analysis, builtins=builtins)
    except RecursionError:  # the checker's bounds (E013, E156) should keep this unreachable
        diagnostics.append(too_deep(files[0].span, "the policy set"))
        return LoadResult(None, tuple(diagnostics), texts)
    needs = Needs({call.index for call in analysis.table_calls.values()})
    policy_set = PolicySet(
        version=_version(sources, schema_text),
        sources=tuple(sources),
        stages=MappingProxyType(stages),
        settings=settings,
        warnings=tuple(diagnostics),
        schema=schema,
        needs=needs,
    )
    return LoadResult(policy_set, tuple(diagnostics), texts)


def compile_text(text: str, name: str = "<policy>", **kwargs: object) -> LoadResult:
    return compile_sources([Source(name, text)], **kwargs)  # type: ignore[arg-type]


def version_of(sources: Sequence[Source], schema_text: str = "") -> str:
    """The policy set's version: a hash of its files' names and texts (and of the schema
    file's text, when there is one)."""
    return _version(sources, schema_text)


def _version(sources: Sequence[Source], schema_text: str = "") -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(Path(source.name).name.encode())
        digest.update(b"\0")
        digest.update(source.text.encode())
        digest.update(b"\0")
    if schema_text:
        digest.update(b"schema\0" + schema_text.encode())
    return digest.hexdigest()[:12]


def schema_beside(path: Path) -> tuple[Schema | None, str, Diagnostic | None]:
    """The schema file beside a policy set: (schema, its text, a diagnostic when it is
    malformed).  No file: (None, "", None)."""
    found = find_schema(path)
    if found is None:
        return None, "", None
    try:
        text = read_utf8(found)
    except NotUtf8Error as exc:
        return None, "", Diagnostic("E144", Severity.ERROR,
                                    f"schema file is not UTF-8 text ({exc.reason})",
                                    Span(str(found), exc.line, exc.column, exc.line,
                                         exc.column + 1),
                                    "save the schema file as UTF-8")
    try:
        return parse_schema(loads_toml(text), str(found)), text, None
    except (SchemaError, tomllib.TOMLDecodeError) as exc:
        line, column = error_position(text, exc)
        message = str(exc).removeprefix(f"{found}: ")
        return None, text, Diagnostic("E144", Severity.ERROR, f"schema file: {message}",
                                      Span(str(found), line, column, line, column + 1),
                                      "see the schema file section of the language "
                                      "reference")


def policy_files(path: Path) -> list[Path]:
    """The `*.policy` entries a path stands for: the file itself, or every entry of a
    directory named `*.policy` in file-name order, whatever it is (a dangling symlink, a
    directory or a FIFO is listed too, so `read_policy_file` reports it instead of the
    set silently missing a file).  Raises FileNotFoundError for a missing path."""
    if path.is_dir():
        return sorted((p for p in path.iterdir() if p.suffix == ".policy"),
                      key=lambda p: p.name)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return [path]


def read_policy_file(path: Path, limit: int) -> bytes | str:
    """Up to `limit` bytes (-1: all) of a policy file, or why it cannot be read as one (str): a
    dangling symlink, a directory, a FIFO, a socket or device, a file that cannot be
    opened.  The file is opened non-blocking and checked with `fstat` before reading,
    so a FIFO never blocks the caller, and a file swapped for one after listing neither."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return ("is a dangling symbolic link (its target does not exist)" if path.is_symlink()
                else "does not exist")
    except OSError as exc:
        return f"cannot be read: {(exc.strerror or str(exc)).lower()}"
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else
                "a FIFO" if stat.S_ISFIFO(mode) else "a socket or device")
        return f"is {kind}, not a regular file"
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(limit)
        except OSError as exc:
            return f"cannot be read: {(exc.strerror or str(exc)).lower()}"


def _unreadable(name: str, problem: str) -> Diagnostic:
    """E019: a `*.policy` entry that is not a readable regular file."""
    return Diagnostic("E019", Severity.ERROR, f"policy file {problem}",
                      Span(name, 1, 1, 1, 2),
                      "remove it, rename it, or point the link at a policy file")


# The largest policy file read, in bytes.  A policy is a page of rules; the limit keeps
# `check` and a reload bounded in memory (about ten times the file's size) and time.
MAX_POLICY_FILE_BYTES = 16 * 1024 * 1024


def _too_large(name: str, head: bytes) -> Diagnostic:
    """E016 at the line and column where the file passes the limit."""
    line = head.count(b"\n") + 1
    column = len(head[head.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
    return Diagnostic("E016", Severity.ERROR,
                      f"policy file is larger than {MAX_POLICY_FILE_BYTES // (1024 * 1024)} MiB "
                      "(the limit is passed here)",
                      Span(name, line, column, line, column + 1),
                      "split the file, or keep large lists in a directory table")


def read_sources(path: Path) -> tuple[list[Source], list[Diagnostic]]:
    """Read a policy set's files.  OSError propagates (the caller reports an I/O error);
    text that is not UTF-8 becomes a positioned diagnostic (E015), and so does an entry
    that is not a readable regular file (E019)."""
    sources: list[Source] = []
    problems: list[Diagnostic] = []
    for file in policy_files(path):
        name = str(file)
        data = read_policy_file(file, MAX_POLICY_FILE_BYTES + 1)
        if isinstance(data, str):
            problems.append(_unreadable(name, data))
            continue
        if len(data) > MAX_POLICY_FILE_BYTES:
            problems.append(_too_large(name, data[:MAX_POLICY_FILE_BYTES]))
            continue
        try:
            sources.append(Source(name, data.decode("utf-8")))
        except UnicodeDecodeError as exc:
            before = data[:exc.start]
            line = before.count(b"\n") + 1
            column = len(before) - (before.rfind(b"\n") + 1) + 1
            problems.append(Diagnostic(
                "E015", Severity.ERROR,
                f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
                Span(name, line, column, line, column + 1),
                "save the file as UTF-8"))
    return sources, problems


def load_path(path: Path | str, **kwargs: object) -> LoadResult:
    """Read and compile the policy set at `path` (a directory or one file)."""
    sources, problems = read_sources(Path(path))
    if problems:
        texts = {s.name: s.text for s in sources}
        return LoadResult(None, tuple(problems), texts)
    if not sources:
        raise FileNotFoundError(f"{path}: no *.policy files")
    if "schema" not in kwargs:
        schema, schema_text, problem = schema_beside(Path(path))
        if problem is not None:
            return LoadResult(None, (problem,), {s.name: s.text for s in sources})
        kwargs = {**kwargs, "schema": schema, "schema_text": schema_text}
    return compile_sources(sources, **kwargs)  # type: ignore[arg-type]


def load_policy_set(path: Path | str) -> PolicySet:
    """Like `load_path`, but raise PolicyError when the set has errors."""
    result = load_path(path)
    if result.policy_set is None:
        raise PolicyError(result.diagnostics)
    return result.policy_set
