"""Short, distinct display names for the tables: drop the prefix every name shares, elide the middle of a long
name, keep its head and its distinguishing tail. The JSON always keeps the full names.

    common_prefix(["transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"])  -> "transformer."
    shorten(["h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight"], 16)
        -> ["h.0.a…ttn.weight", "h.0.a…roj.weight"]
"""

from __future__ import annotations

from collections.abc import Sequence

ELLIPSIS = "…"


def common_prefix(names: Sequence[str]) -> str:
    """The leading dot-separated parts that every name shares, with the trailing dot ("transformer.").

    "" for fewer than two names, and never so long that a name would be left empty: every name keeps at
    least its last part.
    """
    if len(names) < 2:
        return ""
    parts = [n.split(".") for n in names]
    i = 0
    while all(len(p) > i + 1 for p in parts) and len({p[i] for p in parts}) == 1:
        i += 1
    return ".".join(parts[0][:i]) + "." if i else ""


def elide(name: str, width: int, head: int | None = None) -> str:
    """`name` in at most `width` characters: unchanged when it fits, else its first `head` characters (by
    default a third of the room), "…", and its tail."""
    if len(name) <= width:
        return name
    if width <= 1:
        return ELLIPSIS[: max(0, width)]
    keep = width - 1
    h = keep // 3 if head is None else max(0, min(head, keep))
    return name[:h] + ELLIPSIS + name[len(name) - (keep - h) :]


def shorten(names: Sequence[str], width: int) -> list[str]:
    """Each name in at most `width` characters, in order, distinct whenever the names are.

    Names that fit are kept. Long ones keep a head and a tail around "…": the same split for all of them,
    the one closest to a third head, two thirds tail (the tail names the tensor) that keeps every name
    distinct, with a tail of at least a third. When no such split does, each long name gets its own: the
    split nearest that which no other name reads as, else a second window where it differs from the
    others (names that differ only far from both ends); as a last resort a counter (~1, ~2, ...).
    """
    width = max(1, int(width))
    out = list(names)
    long = [i for i, n in enumerate(names) if len(n) > width]
    if not long:
        return out
    distinct = len(set(names))
    keep = width - 1
    pref = keep // 3
    for h in sorted(range(keep - pref + 1), key=lambda h: (abs(h - pref), h)):  # tails of a third or more
        trial = list(names)
        for i in long:
            trial[i] = elide(names[i], width, h)
        if len(set(trial)) == distinct:
            return trial
    for i in long:
        out[i] = _unambiguous(names[i], [n for n in names if n != names[i]], width) or elide(names[i], width)
    _number(out, names, width)
    return out


def _matches(parts: Sequence[str], name: str) -> bool:
    """Whether `name` reads as parts[0] + "…" + parts[1] + "…" + ... (each "…" hiding at least one char)."""
    if not name.startswith(parts[0]) or not name.endswith(parts[-1]):
        return False
    at, end = len(parts[0]), len(name) - len(parts[-1])
    for mid in parts[1:-1]:
        j = name.find(mid, at + 1, end - 1)
        if j < 0:
            return False
        at = j + len(mid)
    return end - at >= 1


def _unambiguous(name: str, others: Sequence[str], width: int) -> str | None:
    """The short form of `name` that no other name reads as: one "…" (the split nearest a third head, with a
    tail of a third or more), else head…window…tail, else one "…" with a shorter tail; None: none is."""
    keep = width - 1
    splits = sorted(range(keep + 1), key=lambda h: (abs(h - keep // 3), h))
    for h in (
        [h for h in splits if keep - h >= keep // 3] + [None] + [h for h in splits if keep - h < keep // 3]
    ):
        if h is None:  # no split with a tail of a third or more: a window first, then any split
            window = _window(name, others, width)
            if window is not None:
                return window
            continue
        parts = [name[:h], name[len(name) - (keep - h) :]]
        if not any(_matches(parts, o) for o in others):
            return parts[0] + ELLIPSIS + parts[1]
    return None


def _window(name: str, others: Sequence[str], width: int) -> str | None:
    """head…window…tail in `width` characters that no other name reads as, the window where `name` differs
    from the names sharing its head and tail; None when there is none."""
    keep = width - 2
    if keep < 3:
        return None
    for a, t in ((keep // 4, keep // 3), (keep // 4, keep // 2), (keep // 5, keep // 4)):
        a, t = max(1, a), max(1, t)
        m = keep - a - t
        head, tail = name[:a], name[len(name) - t :]
        mates = [o for o in others if o.startswith(head) and o.endswith(tail)]
        at = max((_shared_head(name, o) for o in mates), default=a)
        starts = range(a + 1, len(name) - t - m)  # each "…" hides at least one character
        for s in sorted(starts, key=lambda s: (abs(s + m // 2 - at), s)):
            parts = [head, name[s : s + m], tail]
            if not any(_matches(parts, o) for o in others):
                return ELLIPSIS.join(parts)
    return None


def _number(out: list[str], names: Sequence[str], width: int) -> None:
    """Short names still shared by different names end in a counter (~1, ~2, ...) instead (in place)."""
    owners: dict[str, set[str]] = {}
    for short, full in zip(out, names, strict=True):
        owners.setdefault(short, set()).add(full)
    counter: dict[str, int] = {}
    for i, short in enumerate(out):
        if len(owners[short]) > 1:
            n = counter.setdefault(names[i], len(counter) + 1)
            tag = f"~{n}"
            out[i] = elide(names[i], max(1, width - len(tag)))[: max(0, width - len(tag))] + tag


def _shared_head(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
