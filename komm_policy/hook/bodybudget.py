"""The bytes of request bodies one server process holds at once (`max_body_buffer_bytes`).

`max_body_bytes` bounds one body, but not how many are read at once: 512 requests in
progress (`max_concurrency`) of 64 MiB each could make the process reserve 32 GiB.  A hook
request read the ASGI way (`app.HookApp.hook`: bodies over `app.INLINE_BODY_BYTES`, or
every body with a directory that may block) takes its bytes from this budget before it
reads them: a declared Content-Length all at once, as soon as its header is checked; a
chunked body chunk by chunk as it arrives.  They are given back once it is
answered.  A request that does not fit is answered 503 at once (and the connection closed,
its body unread), so Stalwart tempfails it and retries, instead of the process growing
until the kernel kills it.  Bodies read inline (at most `INLINE_BODY_BYTES` each, one per
connection) are not counted.  One budget per process: the event loop's thread alone
takes and gives (no lock)."""

from __future__ import annotations

import json

from starlette.types import Receive

from .response import Answer


class BodyBudget:
    """`limit` bytes (a positive whole number) shared by the bodies being read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        """Bytes taken and not yet given back (`komm_hook_body_bytes_held`)."""

    def take(self, size: int) -> bool:
        """Take `size` more bytes; False (nothing taken) when they would pass the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Give back `size` bytes taken earlier."""
        self.held -= size


class Reservation:
    """The bytes one request holds of a `BodyBudget`; `release` gives them all back."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow(self, size: int) -> bool:
        """Hold `size` bytes in all (more than now, or nothing changes); False when the
        budget cannot give them."""
        if size > self.size:
            if not self.budget.take(size - self.size):
                return False
            self.size = size
        return True

    def release(self) -> None:
        self.budget.give(self.size)
        self.size = 0


TOO_LARGE = 413
"""`read_body`: the body passed `max_body_bytes`."""
OVER_BUDGET = 503
"""`read_body`: the body's bytes would pass the budget."""
_OVER_BUDGET_HEADERS = ((b"retry-after", b"1"), (b"connection", b"close"))


def over_budget(budget: BodyBudget) -> Answer:
    """The 503 for a body that does not fit: JSON like the app's errors, `retry-after`,
    and `connection: close` (its body is left unread)."""
    message = ("server busy: request bodies being read would exceed max_body_buffer_bytes "
               f"({budget.limit} bytes); retry later")
    return Answer(503, json.dumps({"error": message}).encode(), _OVER_BUDGET_HEADERS)


def declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The request's Content-Length (httptools has checked it), 0 without one (chunked)."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return 0


async def read_body(receive: Receive, headers: list[tuple[bytes, bytes]], limit: int,
                    reservation: Reservation) -> bytes | int | None:
    """An ASGI request's body, held in `reservation`: a declared Content-Length before
    reading, a chunked body as it comes.  The body joined once (time linear in its
    size), `TOO_LARGE` past `limit` bytes, `OVER_BUDGET` when the reservation cannot
    grow, None when the client went away."""
    if not reservation.grow(declared_length(headers)):
        return OVER_BUDGET
    chunks = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return TOO_LARGE
        if not reservation.grow(size):
            return OVER_BUDGET
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
