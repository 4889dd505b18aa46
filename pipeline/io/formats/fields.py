"""Checks of the values a record holds (text, id), shared by the formats.

Each check gives the `ErrorKind` and a message that says where and what, so that an error
record tells the user which record to fix and how.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ErrorKind

MALFORMED = ErrorKind.MALFORMED_RECORD.value
INVALID_UTF8 = ErrorKind.INVALID_UTF8.value
INVALID_TEXT = ErrorKind.INVALID_TEXT.value
MISSING = ErrorKind.MISSING_FIELD.value
EMPTY = ErrorKind.EMPTY_TEXT.value
READ_ERROR = ErrorKind.READ_ERROR.value

_MAX_LISTED_FIELDS = 20


def utf8_ok(s: str) -> bool:
    """False if s holds lone surrogates (undecodable bytes or \\ud800-style JSON escapes)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean(s: str) -> str:
    """Make a message safe for Arrow: lone surrogates become escapes."""
    return s if utf8_ok(s) else s.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(exc: BaseException) -> str:
    msg = str(exc)
    return clean(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


def fields_list(names: Any) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(names[:_MAX_LISTED_FIELDS])
    if len(names) > _MAX_LISTED_FIELDS:
        shown += f", ... ({len(names)} in all)"
    return clean(shown) if names else "(none)"


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def text_ok(t: Any) -> bool:
    return type(t) is str and bool(t) and not t.isspace() and "\x00" not in t and (t.isascii() or utf8_ok(t))


def text_problem(t: Any, name: str, where: str, surrogate_kind: str = INVALID_TEXT) -> tuple[str, str]:
    """(error_kind, message) for a text value that failed `text_ok`."""
    if t is None:
        return EMPTY, f"{where}field '{name}' is null"
    if isinstance(t, bytes):
        return MALFORMED, f"{where}field '{name}' is binary, not a string"
    if not isinstance(t, str):
        return MALFORMED, f"{where}field '{name}' is {a(json_type(t))}, not a string"
    if not t:
        return EMPTY, f"{where}field '{name}' is empty"
    if t.isspace():
        return EMPTY, f"{where}field '{name}' holds only whitespace"
    if "\x00" in t:
        return INVALID_TEXT, f"{where}field '{name}' contains a NUL (\\x00) character at offset {t.index(chr(0))}"
    if surrogate_kind == INVALID_UTF8:
        return INVALID_UTF8, f"{where}field '{name}' is not valid UTF-8"
    return INVALID_TEXT, f"{where}field '{name}' contains a lone surrogate (not valid Unicode)"


def id_value(v: Any, name: str, where: str) -> tuple[str | None, str | None, str | None]:
    """(row_id, error_kind, message) from an id field value; row_id None on error."""
    if v is None:
        return None, MISSING, f"{where}id field '{name}' is null"
    if type(v) is str:
        if not v or v.isspace():
            return None, MISSING, f"{where}id field '{name}' is empty"
        if not utf8_ok(v):
            return None, MALFORMED, f"{where}id field '{name}' is not valid Unicode"
        return v, None, None
    if isinstance(v, bool) or isinstance(v, (list, dict, bytes)):
        return None, MALFORMED, f"{where}id field '{name}' is {a(json_type(v))}; expected a string or a number"
    s = str(v)
    return (s, None, None) if utf8_ok(s) else (None, MALFORMED, f"{where}id field '{name}' is not valid Unicode")


def skip_bom(stream: Any) -> None:
    """Drop a UTF-8 byte-order mark at the start of a buffered binary stream."""
    if stream.peek(3)[:3] == b"\xef\xbb\xbf":
        stream.read(3)
