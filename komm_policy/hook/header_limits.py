"""The request header limits of the guarded protocol (`protocol.GuardedProtocol`):
`max_header_bytes` for the request line and header fields together, `max_headers` for
the number of fields.  Over either the answer is `431 Request Header Fields Too Large`
(RFC 6585 §5; `414 URI Too Long`, RFC 9110 §15.5.15, for a request target alone over
it), refused through `RequestLimits._refuse` (JSON body, `connection: close`).

httptools reports a header field only once it is complete (`on_header`), so an
unfinished field line is seen by nobody but httptools' own buffer.  Its bytes are
counted here from the reads instead: every byte of a read that belongs to the header
still being read.  The read a header began in may also hold the end of earlier
(pipelined) requests; their bytes are known from the callbacks (header fields, body
bytes) and left out.  So a header over the limit is refused at the end of the read that
takes it over, however it arrives (one read or many, one long line or many fields),
and httptools never buffers more than the limit and one read.

The estimate of an earlier request's size is exact for the usual spelling (`Name: value`
fields, the body's bytes); odd spacing or chunk framing can only make the *next* request
on the same connection look slightly larger.
"""

from __future__ import annotations

from typing import Any

from .refusals import _Refused


class HeaderLimits:
    """Parser callbacks and read accounting for the header limits, mixed into
    `GuardedProtocol` (which has `guard`, `_refusal` and `_awaiting_header`).  The
    protocol calls `_read_begins()` before it feeds a read to the parser and
    `_header_too_large(len(read))` after; `_header_complete()`, `_body_read(n)` and
    `_message_read()` from its own callbacks."""

    guard: Any
    _refusal: tuple[int, str] | None
    _awaiting_header: bool

    _header_bytes = 0
    """Bytes of the current request line and complete header fields (callbacks)."""
    _header_count = 0
    _header_earlier = 0
    """Bytes of the current header in earlier reads."""
    _began_at: int | None = None
    """Where in this read the current request began (None: in an earlier read)."""
    _read_used = 0
    """Bytes of this read taken by requests that ended in it."""
    _header_here = 0
    _body_here = 0

    def _read_begins(self) -> None:
        self._read_used = self._header_here = self._body_here = 0
        self._began_at = None

    def _header_too_large(self, size: int) -> bool:
        """After a read of `size` bytes: is the header still being read over the limit?"""
        if not self._awaiting_header:
            return False
        self._header_earlier += size - (self._began_at or 0)
        return self._header_earlier > self.guard.limits.max_header_bytes

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self._awaiting_header = True
        self._header_bytes = 16  # method, spaces, "HTTP/1.1", line ends: about
        self._header_count = 0
        self._header_earlier = 0
        self._began_at = self._read_used

    def _header_complete(self) -> None:
        self._awaiting_header = False
        # + 2: the empty line that ends the header
        self._header_here = max(0, self._header_bytes + 2 - self._header_earlier)

    def _body_read(self, size: int) -> None:
        self._body_here += size

    def _message_read(self) -> None:
        self._read_used += self._header_here + self._body_here
        self._header_here = self._body_here = 0

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.guard.limits.max_header_bytes:
            self._refusal = (414, "request target exceeds "
                                  f"{self.guard.limits.max_header_bytes} bytes")
            raise _Refused
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and the line end
        self._header_count += 1
        limits = self.guard.limits
        if self._header_count > limits.max_headers:
            self._refusal = (431, f"more than {limits.max_headers} request header fields")
            raise _Refused
        if self._header_bytes > limits.max_header_bytes:
            self._refusal = (431, f"request header exceeds {limits.max_header_bytes} bytes")
            raise _Refused
        super().on_header(name, value)  # type: ignore[misc]
