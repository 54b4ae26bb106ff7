"""Replaying recorded decisions: what a policy change would change on real traffic.

Each decision record (a JSON line, or a row of the SQLite `mta_log`) holds enough of the
request to decide an envelope stage again: the client address, HELO, SASL login, sender
and recipients (record versions 1 and 2, docs/decision-record.md; records written before
versioning lack HELO, SASL and TLS facts, which are then replayed as absent).  A record is
rebuilt into the hook request Stalwart sent, decided by the new policy set, and compared
with the recorded decision, or, with a baseline set, with the baseline's decision on the
same directory (so data that changed since the log was written affects both alike).

What cannot be replayed is counted under a named reason and never silently skipped: the
data stage (records hold no message headers or body), a redacted client address, a line
that is not a record (invalid JSON, JSON nested deeper than the parser's recursion limit,
not an object), a record version newer than this reader.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .decision import Decision
from .directory import Directory
from .policyset import PolicySet
from .policytest.requests import CaseRequestError, build_request
from .runtime import decide
from .wire import Request

READ_RECORD_VERSION = 2
"""The newest `record_version` this reader understands (0: records without one; 2 differs
from 1 only in lookup results, which replay does not read)."""

ENVELOPE_STAGES = ("connect", "ehlo", "auth", "mail", "rcpt")

# reasons a record is not replayed
DATA_STAGE = "data stage (the record holds no message headers or body)"
REDACTED_IP = "client IP redacted"
NOT_A_RECORD = "not a decision record (unreadable line)"
NEWER_VERSION = "record_version newer than this komm-policy reads"
BAD_VERSION = "malformed record_version (not a whole number from 0 up)"
BAD_REQUEST = "request cannot be rebuilt"


class LogError(OSError):
    """The log cannot be read at all (missing file, not an mta_log database)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The part of a decision a change is judged by."""

    action: str
    reply: str | None
    rule: str | None
    fallback: bool = False

    @classmethod
    def of(cls, decision: Decision) -> Outcome:
        return cls(decision.action, str(decision.reply) if decision.reply else None,
                   decision.rule.name if decision.rule else None, decision.fallback)

    @classmethod
    def recorded(cls, record: dict[str, Any]) -> Outcome:
        reply = record.get("reply")
        text = None
        if isinstance(reply, dict) and reply.get("status") is not None:
            middle = f" {reply['enhanced']}" if reply.get("enhanced") else ""
            text = f"{reply['status']}{middle} {reply.get('message', '')}"
        rule = record.get("rule")
        return cls(str(record.get("action")), text,
                   rule.get("name") if isinstance(rule, dict) else None,
                   bool(record.get("fallback", False)))

    @property
    def answer(self) -> tuple[str, str | None]:
        return (self.action, self.reply)

    def __str__(self) -> str:
        text = self.action + (f" {self.reply}" if self.reply else "")
        return text + (f" ({self.rule})" if self.rule else "") + (
            " [fallback]" if self.fallback else "")


@dataclass(slots=True)
class Change:
    """One changed answer and what identifies its session: the client address (None when
    the record was redacted), HELO, SASL login, sender and recipients as logged."""

    where: str  # "FILE:LINE" or "mta_log rowid N"
    record_id: str | None
    time: str | None
    stage: str
    sender: str | None
    recipients: list[str]
    old: Outcome
    new: Outcome
    client_ip: str | None = None
    helo: str | None = None
    sasl_login: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "id": self.record_id, "time": self.time,
                "stage": self.stage, "client_ip": self.client_ip, "helo": self.helo,
                "sasl_login": self.sasl_login, "sender": self.sender,
                "recipients": self.recipients,
                "old": _outcome_json(self.old), "new": _outcome_json(self.new)}


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {"action": outcome.action, "reply": outcome.reply, "rule": outcome.rule,
            "fallback": outcome.fallback}


@dataclass(slots=True)
class ReplayReport:
    records: int = 0
    replayed: Counter = field(default_factory=Counter)  # stage → records re-decided
    skipped: Counter = field(default_factory=Counter)  # reason → records
    skipped_examples: dict[str, str] = field(default_factory=dict)  # reason → first where
    incomplete: int = 0  # replayed records without record_version (no HELO, SASL, TLS)
    changed: Counter = field(default_factory=Counter)  # stage → answers changed
    changed_rules: Counter = field(default_factory=Counter)  # (stage, old, new) → count
    rule_only: int = 0  # same answer, decided by another rule
    examples: list[Change] = field(default_factory=list)
    max_examples: int = 10

    @property
    def total_changed(self) -> int:
        return sum(self.changed.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "replayed": sum(self.replayed.values()),
            "replayed_by_stage": dict(self.replayed),
            "not_replayed": sum(self.skipped.values()),
            "not_replayed_by_reason": dict(self.skipped),
            "not_replayed_first": self.skipped_examples,
            "without_record_version": self.incomplete,
            "changed": self.total_changed,
            "changed_by_stage": dict(self.changed),
            "changed_by_rule": [
                {"stage": stage, "old_rule": old, "new_rule": new, "count": count}
                for (stage, old, new), count in self.changed_rules.most_common()],
            "same_answer_other_rule": self.rule_only,
            "examples": [c.to_json() for c in self.examples],
        }


# ---------------------------------------------------------------------------------------
# Reading logs


def read_log(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(where, record or None for an unreadable entry) for each entry of a JSONL file or
    an SQLite store's `mta_log`, in order, one at a time.  Raises LogError."""
    try:
        with path.open("rb") as handle:
            header = handle.read(16)
    except OSError as exc:
        raise LogError(f"{path}: {exc.strerror or exc}") from None
    if header == b"SQLite format 3\x00":
        return _read_mta_log(path)
    return _read_jsonl(path)


def _parse(text: bytes | str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # `[[[…` nested past the parser's depth
        return None
    return value if isinstance(value, dict) else None


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield f"{path}:{number}", _parse(line)


def _read_mta_log(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        cursor = conn.execute("SELECT rowid, record FROM mta_log ORDER BY rowid")
    except sqlite3.Error as exc:
        raise LogError(f"{path}: cannot read mta_log: {exc}") from None
    return _rows(conn, cursor)


def _rows(conn: sqlite3.Connection, cursor: sqlite3.Cursor
          ) -> Iterator[tuple[str, dict[str, Any] | None]]:
    try:
        for rowid, record in cursor:
            yield f"mta_log rowid {rowid}", _parse(record) if record else None
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# Rebuilding requests and replaying


def rebuild_request(record: dict[str, Any]) -> Request | str:
    """The hook request a record was decided for, or the reason it cannot be rebuilt."""
    version = record.get("record_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        return BAD_VERSION  # "2", 2.0, true, null: written by no komm-policy
    if version > READ_RECORD_VERSION:
        return NEWER_VERSION
    stage = str(record.get("stage", "")).lower()
    if stage == "data":
        return DATA_STAGE
    if stage not in ENVELOPE_STAGES:
        return BAD_REQUEST
    if not record.get("client_ip"):
        return REDACTED_IP
    fields: dict[str, Any] = {"stage": stage, "client.ip": record["client_ip"]}
    for key, name in (("helo", "client.helo"), ("client_port", "client.port"),
                      ("client_ptr", "client.ptr"), ("server_name", "server.name"),
                      ("server_port", "server.port"), ("server_ip", "server.ip"),
                      ("tls_version", "tls.version"), ("tls_cipher", "tls.cipher"),
                      ("sasl_login", "sasl.login"), ("sasl_method", "sasl.method")):
        if record.get(key) is not None:
            fields[name] = record[key]
    if stage in ("mail", "rcpt") and record.get("sender") is not None:
        fields["sender"] = record["sender"]
    if stage == "rcpt":
        fields["envelope.to"] = list(record.get("recipients") or [])
    try:
        return build_request(None, fields)
    except CaseRequestError:
        return BAD_REQUEST


def replay(entries: Iterable[tuple[str, dict[str, Any] | None]], new: PolicySet,
           directory: Directory, *, baseline: PolicySet | None = None,
           max_examples: int = 10) -> ReplayReport:
    """Re-decide every replayable record with `new` (and `baseline`) and count changes."""
    report = ReplayReport(max_examples=max_examples)
    for where, record in entries:
        report.records += 1
        if record is None:
            _skip(report, NOT_A_RECORD, where)
            continue
        request = rebuild_request(record)
        if isinstance(request, str):
            _skip(report, request, where)
            continue
        stage = request.context.stage
        report.replayed[stage] += 1
        if "record_version" not in record:
            report.incomplete += 1
        old = (Outcome.of(decide(baseline, request, directory)) if baseline is not None
               else Outcome.recorded(record))
        new_outcome = Outcome.of(decide(new, request, directory))
        if old.answer == new_outcome.answer:
            if old.rule != new_outcome.rule:
                report.rule_only += 1
            continue
        report.changed[stage] += 1
        report.changed_rules[(stage, old.rule, new_outcome.rule)] += 1
        if len(report.examples) < max_examples:
            report.examples.append(Change(
                where, record.get("id"), record.get("time"), stage, record.get("sender"),
                _recipients(record), old, new_outcome, _text(record, "client_ip"),
                _text(record, "helo"), _text(record, "sasl_login")))
    return report


def _text(record: dict[str, Any], key: str) -> str | None:
    """A logged value as text, None when absent or null (a redacted `client_ip`)."""
    value = record.get(key)
    return None if value is None else str(value)


def _recipients(record: dict[str, Any]) -> list[str]:
    """The record's recipients as text; a value that is not a list (a hand-edited or
    foreign log) shows as none rather than stopping the replay."""
    recipients = record.get("recipients")
    return [str(r) for r in recipients] if isinstance(recipients, list) else []


def _skip(report: ReplayReport, reason: str, where: str) -> None:
    report.skipped[reason] += 1
    report.skipped_examples.setdefault(reason, where)
