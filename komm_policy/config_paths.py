"""The files and directories `serve` writes, checked before it starts: a decision log
that cannot be written used to be found only when the writer process first wrote (the
service answered, `/readyz` said ok for a minute, then 503).

Each problem is `option: reason` like `config.validate`'s, so `load_config` names where
the value came from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

__all__ = ["path_problems"]


class _LogPaths(Protocol):
    log_jsonl: str
    log_spool: str


def path_problems(config: _LogPaths) -> list[str]:
    """Problems with the decision log's JSONL file (`log_jsonl`, '' for none) and spool
    directory (`log_spool`).  Creates the missing parent directories, as the decision log
    itself does at start; probes writability with a temporary file it removes (an
    existing JSONL file is opened for appending and closed, unchanged)."""
    problems = []
    if config.log_jsonl:
        problem = _file_problem(Path(config.log_jsonl))
        if problem is not None:
            problems.append(f"log_jsonl: {problem}")
    if config.log_spool.strip():
        problem = _directory_problem(Path(config.log_spool))
        if problem is not None:
            problems.append(f"log_spool: {problem}")
    return problems


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _unwritable(directory: Path) -> str | None:
    """Why no file can be created in `directory` (made first if missing), or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".komm-probe-", dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return _reason(exc)
    return None


def _file_problem(path: Path) -> str | None:
    if path.is_dir():
        return f"{path} is a directory, not a file (name the JSONL file in it)"
    if path.exists():
        try:
            with path.open("ab"):
                pass
        except OSError as exc:
            return f"cannot write {path}: {_reason(exc)}"
        return None
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"cannot create {path}: {parent} is not a directory"
            break
    reason = _unwritable(path.parent)
    return None if reason is None else f"cannot create {path}: {reason}"


def _directory_problem(path: Path) -> str | None:
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a directory (the spool is a directory)"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"cannot create {path}: {parent} is not a directory"
            break
    reason = _unwritable(path)
    return None if reason is None else f"cannot create files in {path}: {reason}"
