"""Which hook bodies are decided on the event loop (`app.HookApp`)."""

from __future__ import annotations

INLINE_BODY_BYTES = 64 * 1024
"""Bodies up to this size are decided on the event loop (with a non-blocking directory):
a thread hand-off would cost more than the decision.  Larger ones are decoded and decided
in a worker thread, so a 10 MB message does not hold up `/healthz` or other hooks."""
INLINE_ADDRESSES = 100
"""...unless a body over `QUICK_BODY_BYTES` holds more `@` than this: a decision's work
grows with the addresses it reads (`any a in addresses("X-BeenThere")` parses and looks
up each, about 8 µs an address), and 6,913 short addresses fit in 64 KiB (46 ms on the
loop); this many take about a millisecond."""
QUICK_BODY_BYTES = 1024
"""A body this short is decided on the loop uncounted (at most ~250 addresses in it)."""


def inline(body: bytes) -> bool:
    """Whether to decide this body on the event loop (see `INLINE_BODY_BYTES`)."""
    size = len(body)
    return size <= QUICK_BODY_BYTES or (  # `@` also as the JSON escape \u0040
        size <= INLINE_BODY_BYTES
        and body.count(b"@") + body.count(b"\\u0040") <= INLINE_ADDRESSES)
