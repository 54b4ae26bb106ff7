"""RFC 2047 encoded words (`=?charset?B|Q?text?=`), decoded in time linear in the text.

Only the places RFC 2047 §5 allows are decoded, and the caller says which: whole
whitespace-separated words of unstructured text (§5(1)), words of a phrase (§5(3), with
the narrower Q alphabet so an addr-spec is never taken for one) and words in comments
(§5(2)).  Whitespace between two adjacent encoded words is dropped (§6.2) and adjacent
words in the same charset are joined before decoding, so a character split over two words
survives.  An encoded word in an unknown charset, or one that does not decode, stays as
sent (§6.3).  Charsets come from a fixed list: a name is never looked up in the codec
registry, whose misses are cached for ever and whose searches import modules.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable

# Charset names (lower-case, RFC 2231 language suffix removed) → Python codec names.
CHARSETS: dict[str, str] = {
    "us-ascii": "ascii", "ascii": "ascii", "utf-8": "utf-8", "utf8": "utf-8",
    "utf-16": "utf-16", "utf-16be": "utf-16-be", "utf-16le": "utf-16-le", "utf-7": "utf-7",
    **{f"iso-8859-{n}": f"iso8859_{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15,
                                                    16)},
    **{f"iso8859-{n}": f"iso8859_{n}" for n in (1, 2, 15)},
    "latin1": "latin_1", "latin-1": "latin_1",
    **{f"windows-{n}": f"cp{n}" for n in range(1250, 1259)},
    **{f"cp{n}": f"cp{n}" for n in range(1250, 1259)},
    "koi8-r": "koi8_r", "koi8-u": "koi8_u", "gb2312": "gb2312", "gbk": "gbk",
    "gb18030": "gb18030", "big5": "big5", "big5-hkscs": "big5hkscs", "shift_jis": "shift_jis",
    "shift-jis": "shift_jis", "sjis": "shift_jis", "euc-jp": "euc_jp",
    "iso-2022-jp": "iso2022_jp", "euc-kr": "euc_kr", "ks_c_5601-1987": "euc_kr",
    "tis-620": "tis_620", "viscii": "cp1258",
}

# One encoded word; the text may not hold `?` or whitespace (RFC 2047 §2).
_WORD = r"=\?([^?\s]{1,64})\?([BbQq])\?([^?\s]*)\?="
# Unstructured text: a word bounded by whitespace or the ends (RFC 2047 §5(1)).
_UNSTRUCTURED = re.compile(rf"(?<![^ \t]){_WORD}(?![^ \t])")
# A phrase (§5(3)): Q text limited to letters, digits and ! * + - / = _; bounded by
# whitespace, the ends or the specials that end a phrase word.
_PHRASE_WORD = (r"""=\?([^?\s]{1,64})\?(?:([Bb])\?([A-Za-z0-9+/=]*)|([Qq])\?"""
                r"""([A-Za-z0-9!*+/=_-]*))\?=""")
_PHRASE = re.compile(rf"""(?<![^ \t,:;<>()"]){_PHRASE_WORD}(?![^ \t,:;<>()"])""")
PHRASE_RUN = re.compile(
    rf"""(?<![^ \t,:;<>()"]){_PHRASE_WORD}(?:[ \t]++{_PHRASE_WORD})*(?![^ \t,:;<>()"])""")
"""Whitespace-separated encoded words of a phrase, as one stretch (for `decode_phrase`)."""
# Inside a comment (§5(2)): bounded by whitespace, parentheses or the ends.
_COMMENT = re.compile(rf"(?<![^ \t()]){_WORD}(?![^ \t()])")


def _decode_bytes(encoding: str, text: str) -> bytes | None:
    try:
        if encoding in "Bb":
            padded = text + "=" * (-len(text) % 4)
            return binascii.a2b_base64(padded.encode("ascii"), strict_mode=False)
        return binascii.a2b_qp(text.encode("ascii"), header=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _codec(charset: str) -> str | None:
    return CHARSETS.get(charset.split("*", 1)[0].lower())


def _decode_words(text: str, pattern: re.Pattern[str],
                  groups: Callable[[re.Match[str]], tuple[str, str, str]]) -> str:
    out: list[str] = []
    last = 0              # end of the text already copied to `out`
    run_codec: str | None = None
    run_bytes: list[bytes] = []

    def flush() -> None:
        if run_codec is not None:
            out.append(b"".join(run_bytes).decode(run_codec, "replace"))
            run_bytes.clear()

    for match in pattern.finditer(text):
        charset, encoding, payload = groups(match)
        codec = _codec(charset)
        raw = _decode_bytes(encoding, payload) if codec is not None else None
        if raw is None or codec is None:
            continue                       # stays as sent, part of the next gap
        start = match.start()
        gap = text[last:start]
        if run_codec is not None and not gap.strip(" \t"):   # adjacent words (§6.2)
            if codec != run_codec:
                flush()
                run_codec = codec
        else:
            flush()
            out.append(gap)
            run_codec = codec
        run_bytes.append(raw)              # same charset: bytes joined, decoded once
        last = match.end()
    flush()
    out.append(text[last:])
    return "".join(out)


def decode_unstructured(text: str) -> str:
    """Decode the encoded words of unstructured text (Subject, Comments, X- fields)."""
    if "=?" not in text:
        return text
    return _decode_words(text, _UNSTRUCTURED, lambda m: m.group(1, 2, 3))


def decode_phrase(text: str) -> str:
    """Decode the encoded words of a phrase (a display name outside quotes and `<…>`)."""
    if "=?" not in text:
        return text
    return _decode_words(text, _PHRASE, lambda m: (
        m.group(1), m.group(2) or m.group(4), m.group(3) if m.group(2) else m.group(5)))


def decode_comment(text: str) -> str:
    """Decode the encoded words inside comment text."""
    if "=?" not in text:
        return text
    return _decode_words(text, _COMMENT, lambda m: m.group(1, 2, 3))
