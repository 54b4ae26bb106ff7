"""What a decision puts into its record is bounded (docs/decision-record.md, "Bounds").

A decision lists every lookup it made, with its arguments, and a policy may look up
values any SMTP client sends: the shipped `mail_loop` rule looks up each address of
`X-BeenThere`, and 100,000 addresses made an 11.7 MB record.  The record keeps the first
`MAX_LISTED_LOOKUPS` lookups and counts the others (`lookups_omitted`), and each text
the policy put there (a lookup's arguments and error, a `log` line, a rule error, the
cause) is cut after `MAX_RECORD_TEXT` characters with a marker saying how long it was.

The answer path's packer (`entries.EntryPacker.pack`) applies `bounded` only to a
decision that needs it (more lookups than listed, checked before packing, or a packed
entry over `CHECK_ENTRY_BYTES`), so a usual decision costs two comparisons more; records
made from a bounded decision are the ones logged.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..decision import Decision, LookupRecord

MAX_LISTED_LOOKUPS = 100
"""Lookups a record lists; the shipped set's decisions make at most a few."""
MAX_RECORD_TEXT = 1024
"""Characters of one policy-made text in a record (wire.MAX_TEXT: an address, a HELO)."""
CHECK_ENTRY_BYTES = 64 * 1024
"""A spool entry longer than this is packed again from `bounded(decision)`; a usual
entry has under a kilobyte."""
OMITTED = "(not listed)"
"""The `function` of the marker lookup that carries the count of lookups not listed,
from the answer path to the writer (`entries`), which makes it `lookups_omitted`."""


def cut(text: str) -> str:
    """`text` itself when at most `MAX_RECORD_TEXT` characters long; else
    `MAX_RECORD_TEXT` characters: its beginning and `…[cut: N characters]` (N: the whole
    length), so a cut text is never cut again."""
    if len(text) <= MAX_RECORD_TEXT:
        return text
    marker = f"…[cut: {len(text)} characters]"
    return text[:MAX_RECORD_TEXT - len(marker)] + marker


def _cut_value(value: Any) -> Any:
    if isinstance(value, str):
        return cut(value)
    if isinstance(value, tuple | list) and value:
        return tuple(_cut_value(v) for v in value[:MAX_LISTED_LOOKUPS])
    return value


def _cut_lookup(lookup: LookupRecord) -> LookupRecord:
    args = lookup.args
    error = lookup.error
    if all(not isinstance(a, str | tuple | list) or len(a) <= MAX_RECORD_TEXT
           for a in args) and (error is None or len(error) <= MAX_RECORD_TEXT):
        return lookup
    return msgspec.structs.replace(
        lookup, args=tuple(_cut_value(a) for a in args),
        error=None if error is None else cut(error))


def bounded(decision: Decision) -> Decision:
    """The decision as its record shows it: at most `MAX_LISTED_LOOKUPS` lookups (then
    one marker lookup, `OMITTED`, whose `result` is the count of the others), texts cut
    (`cut`).  Idempotent; the action, reply, modifications and rule are unchanged."""
    lookups = decision.lookups
    listed = tuple(_cut_lookup(lookup) for lookup in lookups[:MAX_LISTED_LOOKUPS]
                   if lookup.function != OMITTED)
    omitted = sum(lookup.result for lookup in lookups if lookup.function == OMITTED)
    omitted += max(0, len([lookup for lookup in lookups if lookup.function != OMITTED])
                   - MAX_LISTED_LOOKUPS)
    if omitted:
        listed += (LookupRecord(OMITTED, (), omitted),)
    return msgspec.structs.replace(
        decision, lookups=listed,
        logs=tuple(cut(line) for line in decision.logs),
        errors=tuple(cut(error) for error in decision.errors),
        cause=None if decision.cause is None else cut(decision.cause))


def split_omitted(lookups: tuple[LookupRecord, ...]) -> tuple[tuple[LookupRecord, ...], int]:
    """A record's lookups without the marker, and the count it carries (0: none)."""
    if lookups and lookups[-1].function == OMITTED:
        return lookups[:-1], int(lookups[-1].result)
    return lookups, 0
