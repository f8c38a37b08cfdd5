"""Checked reading of JSON fields: every value from a store file is checked for type and range here, so a
damaged file never reaches the store code as a TypeError or a giant allocation (CorruptStoreError instead)."""

from __future__ import annotations

from typing import Any

from gradmanifold.errors import CorruptStoreError

MISSING = object()
MAX_TEXT = 4096


def kind(v: Any) -> str:
    """A JSON type name for messages."""
    if v is MISSING or v is None:
        return "null" if v is None else "nothing (the key is missing)"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(v), type(v).__name__)


def short(v: Any) -> str:
    """repr of a value from the file, cut to one short line (a damaged field may hold megabytes)."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def int_field(
    d: dict[str, Any],
    key: str,
    where: str,
    lo: int | None = None,
    hi: int | None = None,
    default: Any = MISSING,
) -> int:
    v = d.get(key, default)
    if v is MISSING:
        raise CorruptStoreError(f"{where}: {key!r} is missing")
    if not isinstance(v, int) or isinstance(v, bool):
        raise CorruptStoreError(f"{where}: {key!r} must be an integer, found {kind(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise CorruptStoreError(f"{where}: {key!r} = {short(v)} is out of range [{lo}, {hi}]")
    return v


def opt_int(d: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int | None:
    if d.get(key) is None:
        return None
    return int_field(d, key, where, lo=lo, hi=hi)


def str_field(d: dict[str, Any], key: str, where: str, default: Any = MISSING) -> str:
    v = d.get(key, default)
    if v is MISSING:
        raise CorruptStoreError(f"{where}: {key!r} is missing")
    if not isinstance(v, str):
        raise CorruptStoreError(f"{where}: {key!r} must be a string, found {kind(v)}")
    if len(v) > MAX_TEXT:
        raise CorruptStoreError(f"{where}: {key!r} is {len(v)} characters long (at most {MAX_TEXT})")
    return v


def opt_str(d: dict[str, Any], key: str, where: str) -> str | None:
    return None if d.get(key) is None else str_field(d, key, where)


def check_text(text: str, where: str) -> None:
    """Refuse text that cannot be printed (lone surrogates from a damaged file) or spans lines."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CorruptStoreError(f"{where}: a text field holds invalid unicode") from None
    if any(c in text for c in "\n\r\x00"):
        raise CorruptStoreError(f"{where}: a text field holds a line break or NUL")


def is_crc(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)
