"""Recorder options shared by every `gradmanifold record` mode, and their environment-variable form.

Wrap mode runs the training command as a child process; the child's recorder learns its options from these
environment variables, set by the parent (a job can also set them itself and put the start-up folder,
`gradmanifold.wrap.boot_dir()`, on PYTHONPATH):

    GRADMANIFOLD_RECORD_OUT       store path (absolute); the only required one: recording is off without it
    GRADMANIFOLD_RECORD_K         output dims k (256)
    GRADMANIFOLD_RECORD_SEED      projection seed (0)
    GRADMANIFOLD_RECORD_KIND      sparse | gaussian (sparse)
    GRADMANIFOLD_RECORD_S         nonzeros per input coordinate of the sparse map (projection default)
    GRADMANIFOLD_RECORD_EVERY     record every N-th optimizer step (1)
    GRADMANIFOLD_RECORD_GROUPS    auto | single | tensor | module | NAME=GLOB[|GLOB],... (auto)
    GRADMANIFOLD_RECORD_RESUME    allow | must | never (allow)
    GRADMANIFOLD_RECORD_FLUSH     seconds between commits (30)
    GRADMANIFOLD_RECORD_SPECTRA_EVERY   layer spectra every N steps (0: off)
    GRADMANIFOLD_RECORD_SPECTRA_TOP     singular values kept per layer (20)
    GRADMANIFOLD_RECORD_UPDATES   parameter updates: exact | projected (unset: off)
    GRADMANIFOLD_RECORD_THREADS   auto | 1 (a background thread) | 0 (the training thread) (auto)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gradmanifold.errors import UsageError

ENV_PREFIX = "GRADMANIFOLD_RECORD_"
GROUP_KEYWORDS = ("auto", "single", "tensor", "module")
_ENV_FIELDS = {
    "out": "OUT",
    "k": "K",
    "seed": "SEED",
    "kind": "KIND",
    "s": "S",
    "every": "EVERY",
    "groups": "GROUPS",
    "resume": "RESUME",
    "flush_interval": "FLUSH",
    "spectra_every": "SPECTRA_EVERY",
    "spectra_top": "SPECTRA_TOP",
    "updates": "UPDATES",
    "threads": "THREADS",
}


@dataclass(frozen=True)
class RecordOptions:
    """What every mode needs to build a Recorder; `groups` is kept as text until a layout is known."""

    out: str
    k: int = 256
    seed: int = 0
    kind: str = "sparse"
    s: int | None = None
    every: int = 1
    groups: str = "auto"
    resume: str = "allow"
    flush_interval: float = 30.0
    spectra_every: int = 0
    spectra_top: int = 20
    updates: str | None = None
    threads: str = "auto"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UsageError(f"--k must be at least 1, not {self.k}")
        if not 0 <= self.seed < 1 << 64:
            raise UsageError(f"--seed must be an integer in [0, 2**64), not {self.seed}")
        if self.kind not in ("sparse", "gaussian"):
            raise UsageError(f"--kind must be sparse or gaussian, not {self.kind!r}")
        if self.every < 1:
            raise UsageError(f"--every must be at least 1, not {self.every}")
        if self.spectra_every < 0:
            raise UsageError(
                f"--spectra-every must be 0 (off) or a positive step count, not {self.spectra_every}"
            )
        if self.spectra_top < 1:
            raise UsageError(f"--spectra-top must be at least 1, not {self.spectra_top}")
        if self.updates not in (None, "exact", "projected"):
            raise UsageError(f"updates must be exact or projected, not {self.updates!r}")
        if str(self.threads) not in ("auto", "0", "1"):
            raise UsageError(
                "--threads must be auto, 0 (record on the training thread) or 1 (a background thread), "
                f"not {self.threads!r}"
            )
        if self.resume not in ("allow", "must", "never"):
            raise UsageError(f"--resume must be allow, must or never, not {self.resume!r}")
        parse_groups(self.groups)  # validate early, with the option's name in the message

    def recorder(self, names: Sequence[str] | None = None, **extra: Any) -> Any:
        """A Recorder for these options; `names` (tensor names) are needed for groups='module'."""
        from gradmanifold.record import Recorder

        return Recorder(
            self.out,
            k=self.k,
            seed=self.seed,
            kind=self.kind,  # type: ignore[arg-type]
            s=self.s,
            groups=groups_for(self.groups, names),
            every=self.every,
            resume=self.resume,  # type: ignore[arg-type]
            flush_interval=self.flush_interval,
            spectra_every=self.spectra_every,
            spectra_top=self.spectra_top,
            updates=self.updates or False,  # type: ignore[arg-type]
            threads="auto" if str(self.threads) == "auto" else int(self.threads),
            **extra,
        )

    def to_env(self) -> dict[str, str]:
        out = {}
        for name, value in asdict(self).items():
            if value is not None:
                out[ENV_PREFIX + _ENV_FIELDS[name]] = os.fspath(value) if name == "out" else str(value)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RecordOptions | None:
        """The options in `env`, or None when GRADMANIFOLD_RECORD_OUT is not set (recording off)."""
        raw = {name: env.get(ENV_PREFIX + key) for name, key in _ENV_FIELDS.items()}
        if not raw["out"]:
            return None
        kw: dict[str, Any] = {"out": raw["out"]}
        convs: tuple[tuple[str, type], ...] = (
            ("k", int),
            ("seed", int),
            ("s", int),
            ("every", int),
            ("flush_interval", float),
            ("spectra_every", int),
            ("spectra_top", int),
        )
        for name, conv in convs:
            text = raw[name]
            if text:
                try:
                    kw[name] = conv(text)
                except ValueError:
                    raise UsageError(
                        f"{ENV_PREFIX}{_ENV_FIELDS[name]}={raw[name]!r} is not a number"
                    ) from None
        for name in ("kind", "groups", "resume", "updates", "threads"):
            if raw[name]:
                kw[name] = raw[name]
        return cls(**kw)


def parse_groups(text: str) -> str | dict[str, list[str]]:
    """'auto', 'single', 'tensor', 'module', or 'NAME=GLOB[|GLOB],...' -> keyword or mapping name -> globs."""
    text = text.strip()
    if text in GROUP_KEYWORDS:
        return text
    mapping: dict[str, list[str]] = {}
    for item in text.split(","):
        name, sep, pats = item.partition("=")
        name = name.strip()
        globs = [p.strip() for p in pats.split("|") if p.strip()]
        if not sep or not name or not globs:
            raise UsageError(
                f"--groups {text!r}: expected one of {', '.join(GROUP_KEYWORDS)} or NAME=GLOB[|GLOB],... "
                "(for example 'enc=encoder.*,head=head.*|fc.*')"
            )
        if name in mapping:
            raise UsageError(f"--groups {text!r}: group {name!r} is named twice")
        mapping[name] = globs
    return mapping


def groups_for(text: str, names: Sequence[str] | None) -> Any:
    """The Recorder's `groups` argument; 'module' gives one group per module (the name up to its last dot)."""
    parsed = parse_groups(text)
    if parsed == "module":
        if names is None:
            return "auto"
        mapping: dict[str, list[str]] = {}
        for n in names:
            mapping.setdefault(n.rpartition(".")[0] or n, []).append(n)
        return mapping
    if parsed == "auto":
        return None
    return parsed
