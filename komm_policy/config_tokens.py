"""Secrets in the configuration: reading a token file, and what makes a text no token.

A token travels in an HTTP header (the hook's `Authorization: Bearer`, or Basic's password;
the SpacetimeDB calls' bearer), so a text no header could carry is refused where it is
read, at start and on SIGHUP, rather than leaving a service that looks ready and refuses
(or is refused by) every request.
"""

from __future__ import annotations

from pathlib import Path

TOKEN_FIRST, TOKEN_LAST = "\x21", "\x7e"
"""The characters a token may hold: visible ASCII (`!` to `~`).  RFC 6750 §2.1's b64token
(letters, digits, `-._~+/`, trailing `=`) is the standard, but operators may already use
tokens with other punctuation (`pwgen -y`, password managers), and every visible ASCII
character passes unchanged in a header value (RFC 9110 field-vchar), so only what no
request could match is refused: non-ASCII (the hook reads a Bearer header's bytes as
latin-1 and compares them with the token's UTF-8, so no Bearer request matches it; Basic
could carry it in base64, but which scheme the MTA sends is its configuration's choice, and
a token one scheme cannot send is a trap), spaces and control characters (a header value
is stripped and split at the scheme's space)."""


def read_token(path: Path, origin: str, problems: list[str]) -> str | None:
    """The file's text, stripped.  An empty (or blank) file is a problem, not "no token":
    SpacetimeDB would take it as an anonymous connection with a fresh identity, the hook
    as no authentication — both silently."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(f"{origin}: cannot read {path}: {exc.strerror}")
        return None
    except UnicodeDecodeError as exc:
        problems.append(f"{origin}: {path} is not UTF-8 text ({exc.reason})")
        return None
    problem = token_text_problem(text)
    if problem is not None:
        problems.append(f"{origin}: token file {path} {problem}")
        return None
    return text


def token_text_problem(text: str) -> str | None:
    """Why a token file's text (stripped) is no token, or None.  Empty: refused (see
    `read_token`).  More than one line: no request could ever send it (a header value
    holds no line break), so every request would be refused 401 from a service that
    looks ready; a file of two tokens is a mistake to name, not to guess at.  Any other
    character no header could carry: `token_alphabet_problem`."""
    if not text:
        return ("is empty (write the token into it, or remove the setting to run "
                "without a token)")
    if "\n" in text or "\r" in text:
        lines = len(text.splitlines())
        return (f"holds {lines} lines: a token is one line (a request cannot send a "
                "line break)")
    return token_alphabet_problem(text)


def token_alphabet_problem(text: str) -> str | None:
    """Why `text` (a token, not stripped) could never be sent in a header, or None: the
    first character outside visible ASCII (`TOKEN_FIRST`..`TOKEN_LAST`), named by its kind
    and position only, never by itself (the message is printed; the token is a secret).
    Time linear in `text`."""
    for index, char in enumerate(text):
        if TOKEN_FIRST <= char <= TOKEN_LAST:
            continue
        if char == " ":
            kind = "a space"
        elif char > "\x7f":
            kind = "a non-ASCII character"
        else:
            kind = "a control character"
        return (f"holds {kind} (character {index + 1} of {len(text)}): a token is visible "
                "ASCII (0x21-0x7E), since no request could send it in a header otherwise")
    return None
