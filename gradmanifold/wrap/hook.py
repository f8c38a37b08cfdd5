"""The child side of wrap mode: torch's global optimizer step pre-hook records every optimizer step.

`arm()` runs at interpreter start-up (boot/sitecustomize.py). It imports nothing heavy: it adds a finder to
sys.meta_path that waits for `torch.optim.optimizer` to be imported, and once it is, registers
`torch.optim.optimizer.register_optimizer_step_pre_hook`. So a Python process that never imports torch (the
torchrun launcher, a data tool) pays one string comparison per import.

Recording (in the pre-hook: gradients are final, the update is not applied yet):
- Rank 0 writes. Replicated gradients (DDP, one process): only rank 0 records; a rank other than 0 (RANK, or
  LOCAL_RANK, or an initialised torch.distributed) records nothing. Sharded gradients (FSDP2 DTensors, FSDP1
  flat parameters, tensor parallel): every rank projects its shard and joins one all-reduce per recorded
  step, and rank 0 writes (gradmanifold.sharded, docs/SHARDED.md). Decided per optimizer at its first step.
- One store per optimizer, in the order they first step: GRADMANIFOLD_RECORD_OUT for the first,
  `<stem>.opt1.zarr`, ... for the others. The row's step is the optimizer's own step count from 0.
- Names by module path. At an optimizer's first step the hook walks the objects of the process
  (gc.get_objects) for torch modules, keeps the roots (modules that are nobody's child), and names each of
  the optimizer's parameters by its path in the root that holds the most of them (`encoder.layers.0.linear1
  .weight`); wrapper prefixes of DistributedDataParallel/DataParallel (`module.`), FSDP and torch.compile
  (`_orig_mod.`) are dropped. Parameters found in other roots get the root's class name in front; parameters
  of no module are named by position, `param_groups.<i>.<j>`. Parameters without a gradient at the first step
  are left out (frozen or unused). The groups option then groups these names (auto: one group per tensor up
  to 64, else by module prefix).
- Commit: the Recorder commits every flush interval, at exit (atexit), and on SIGTERM, SIGINT and SIGHUP
  through handlers installed at the first step (main thread only) that commit and then chain to the handler
  that was there before (the default action re-raised, KeyboardInterrupt for SIGINT). A signal that lands
  while a step is being recorded is handled right after that step.
- Start-up: once torch.optim is imported, a background thread (rank 0's) imports the recorder and the store
  and loads the projection kernels, while the job builds its model and data, so the first step does not wait.
- Forked children (DataLoader workers) inherit the hook and the handlers but record nothing and never commit
  or unlock the parent's store.
- Never stops the job: an error while recording prints one line on stderr, commits what was recorded and
  turns recording off for the rest of the run (for that optimizer only while a sharded optimizer records:
  its ranks must go on meeting in the all-reduce).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import importlib.machinery
import os
import signal
import sys
import threading
import weakref
from collections.abc import Sequence
from types import FrameType, ModuleType
from typing import Any

from gradmanifold.wrap.options import RecordOptions

TARGET = "torch.optim.optimizer"
SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


def is_recording_rank(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """True for the process that writes: rank 0 by RANK, or LOCAL_RANK without RANK, or no rank at all."""
    rank = env.get("RANK")
    if rank is None:
        rank = env.get("LOCAL_RANK")
    return rank in (None, "", "0")


def _is_rank_zero() -> bool:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()) == 0
    return is_recording_rank()


def arm() -> None:
    """Register the step pre-hook now if torch.optim is loaded, else when it is (on every rank: a sharded
    job needs every rank; the others turn themselves off at the first step)."""
    opts = RecordOptions.from_env(os.environ)
    if opts is None:
        return
    state = _State(opts)
    _STATE.append(state)
    module = sys.modules.get(TARGET)
    if module is not None:
        state.attach(module)
    else:
        sys.meta_path.insert(0, _Finder(state))


_STATE: list[_State] = []


class _Finder(importlib.abc.MetaPathFinder):
    """Lets the other finders load torch.optim.optimizer, then attaches the hook once it has executed."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, self.state)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, state: _State) -> None:
        self.inner = inner
        self.state = state

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        self.state.attach(module)


class _OptimizerRecorder:
    """The names, store and step count of one optimizer."""

    def __init__(self, state: _State, optimizer: Any, index: int) -> None:
        self.state = state
        self.index = index
        self.steps = 0
        from gradmanifold import sharded

        params = [
            (gi, pi, p) for gi, g in enumerate(optimizer.param_groups) for pi, p in enumerate(g["params"])
        ]
        roots = _module_roots()
        self.fsdp1 = sharded.fsdp1_index(m for r in roots for m in r.modules())
        self.rank = sharded.rank()
        named = name_parameters(params, roots)
        # an original parameter of FSDP1 (use_orig_params) has no gradient where its shard is empty
        self.named = [
            (n, p) for n, p in named if p.requires_grad and (p.grad is not None or id(p) in self.fsdp1)
        ]
        self.distributed = any(id(p) in self.fsdp1 or sharded.is_distributed(p.grad) for _, p in self.named)
        # replicated gradients: rank 0 alone; sharded: every rank takes part (rank 0 writes)
        self.active = self.distributed or _is_rank_zero()
        self.off = False
        self.recorder: Any = None

    def tensors(self, what: str) -> dict[str, Any]:
        """name -> gradient (what="grad") or parameter, FSDP1 flat parameters split into the originals."""
        from gradmanifold import sharded

        if not self.fsdp1:  # the common case, every step: plain tensors, nothing to expand
            got = {n: p.grad if what == "grad" else p.detach() for n, p in self.named}
            if what == "grad" and any(v is not None and v.is_sparse for v in got.values()):
                got = {n: v.to_dense() if v is not None and v.is_sparse else v for n, v in got.items()}
            return got
        out: dict[str, Any] = {}
        for name, p in self.named:
            value = p.grad if what == "grad" else p.detach()
            for n, v in sharded.expand(name, value, self.fsdp1.get(id(p)), self.rank):
                if what == "grad" and v is not None and getattr(v, "is_sparse", False):
                    v = v.to_dense()
                out[n] = v
        return out

    def record(self, optimizer: Any) -> None:
        step = self.steps
        self.steps += 1
        opts = self.state.opts
        if step % opts.every or self.off or not self.active:
            return
        grads = self.tensors("grad")
        if self.recorder is None:
            if not grads:
                return
            out = _store_path(opts.out, self.index)
            self.recorder = RecordOptions(**{**opts.__dict__, "out": out}).recorder(
                list(grads), on_error="warn"
            )
        lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
        # The parameters before this step's update: theta_t, the same definition as the training loop's.
        params = self.tensors("param") if opts.updates else None
        self.recorder.record(step, grads, lr=lr, params=params)

    def close(self, status: str, final: bool = True) -> None:
        """Commit and close the store; not final (a signal the job may survive) with sharded gradients:
        commit and release it but keep the Recorder, whose ranks meet at every step (the next reopens it)."""
        if not final and self.distributed and self.recorder is not None:
            self.recorder.suspend(status)
            return
        rec, self.recorder = self.recorder, None
        if rec is not None:
            rec.close(status=status)


class _State:
    def __init__(self, opts: RecordOptions) -> None:
        self.opts = opts
        self.by_optimizer: weakref.WeakKeyDictionary[Any, _OptimizerRecorder] = weakref.WeakKeyDictionary()
        self.count = 0
        self.off = False
        self.busy = False
        self.pending: list[tuple[int, FrameType | None]] = []
        self.previous: dict[int, Any] = {}
        self.all: list[_OptimizerRecorder] = []
        self.pid = os.getpid()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.forked)

    def forked(self) -> None:
        """In a forked child (a DataLoader worker): record nothing, and never commit or unlock the parent's
        store, neither at exit nor on a signal."""
        self.off = True
        for rec in self.all:
            rec.recorder = None  # the Recorder's own fork guard keeps this copy from touching the store

    def attach(self, module: ModuleType) -> None:
        module.register_optimizer_step_pre_hook(self.pre_step)
        if is_recording_rank():  # the other ranks load the recorder only if their gradients are sharded
            threading.Thread(target=_warm_up, name="gradmanifold-warm-up", daemon=True).start()

    def pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.off:
            return
        self.busy = True
        rec = None
        try:
            rec = self.by_optimizer.get(optimizer)
            if rec is None:
                if self.count == 0:
                    self._first_step()
                rec = _OptimizerRecorder(self, optimizer, self.count)
                self.count += 1
                self.by_optimizer[optimizer] = rec
                self.all.append(rec)
            rec.record(optimizer)
        except Exception as exc:
            self.turn_off(f"{type(exc).__name__}: {exc}", rec)
        finally:
            self.busy = False
        while self.pending:
            signum, frame = self.pending.pop(0)
            self.on_signal(signum, frame)

    def _first_step(self) -> None:
        """Install the commit-on-signal handlers (rank 0 only: the other ranks hold no store)."""
        if _is_rank_zero() and threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    with contextlib.suppress(ValueError, OSError):
                        self.previous[sig] = signal.signal(sig, self.on_signal)

    def turn_off(self, why: str, culprit: _OptimizerRecorder | None = None) -> None:
        """Stop recording after an error: everything, or only the culprit's optimizer while a sharded one
        records (its ranks stop together, through the all-reduce; the others must go on meeting)."""
        sharded = [r for r in self.all if r.distributed and not r.off and r is not culprit]
        where = f" (rank {culprit.rank})" if culprit is not None and culprit.rank else ""
        text = " ".join(why.split())
        print(f"gradmanifold: recording stopped, training goes on{where}: {text}", file=sys.stderr)
        try:
            if culprit is not None and sharded:
                culprit.off = True
                culprit.close("failed")
            else:
                self.off = True
                self.close_all("failed")
        except Exception as exc:
            print(f"gradmanifold: could not commit the store: {exc}", file=sys.stderr)

    def close_all(self, status: str, final: bool = True) -> None:
        for rec in self.all:
            rec.close(status, final)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a forked child inherited the handler: not its store
            self._chain(signum, frame)
            return
        if self.busy:
            self.pending.append((signum, frame))
            return
        try:
            self.close_all("interrupted", final=False)  # a later step (the job went on) reopens, appends
        except Exception as exc:
            print(f"gradmanifold: could not commit the store: {exc}", file=sys.stderr)
        self._chain(signum, frame)

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        prev = self.previous.get(signum, signal.SIG_DFL)
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _warm_up() -> None:
    """Import the recorder and the store and load the projection kernels while the job sets itself up, so
    that the first optimizer step does not pay for them (about a second on a small machine)."""
    try:
        import numpy as np

        import gradmanifold.record
        import gradmanifold.store.writer  # noqa: F401  (zarr)
        from gradmanifold.hotpath import warm_up
        from gradmanifold.projection import ProjectionSpec, project_with_norm

        for dtype in (np.float32, np.float64):
            project_with_norm(np.ones(4, dtype), ProjectionSpec(k=8), "warm-up")
        warm_up()
    except Exception:  # the first step will report the problem, in the main thread
        pass


def _store_path(out: str, index: int) -> str:
    from gradmanifold.wrap import store_path

    return store_path(out, index)


def _module_roots() -> list[Any]:
    """Every live torch module that is no other module's child, in a stable order."""
    torch_nn = sys.modules.get("torch.nn")
    if torch_nn is None:
        return []
    module_type = torch_nn.Module
    # type(o), not isinstance: isinstance reads __class__, which some lazy objects answer with a warning
    modules = [o for o in gc.get_objects() if issubclass(type(o), module_type)]
    children = {id(c) for m in modules for c in m.children()}
    return [m for m in modules if id(m) not in children]


def name_parameters(params: Sequence[tuple[int, int, Any]], roots: Sequence[Any]) -> list[tuple[str, Any]]:
    """(name, parameter) for each (param group, position, parameter): its module path (see above)."""
    from gradmanifold.sharded import WRAPPER_PREFIXES

    want = {id(p) for _, _, p in params}
    per_root: list[tuple[Any, dict[int, str]]] = []
    for root in roots:
        prefix = WRAPPER_PREFIXES.get(type(root).__name__, "")
        found = {}
        for name, p in root.named_parameters():
            if id(p) in want and id(p) not in found:
                found[id(p)] = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        if found:
            per_root.append((root, found))
    names: dict[int, str] = {}
    used_roots = 0
    labels: dict[str, int] = {}
    while per_root:
        per_root.sort(key=lambda rf: -sum(1 for i in rf[1] if i not in names))
        root, found = per_root.pop(0)
        new = {i: n for i, n in found.items() if i not in names}
        if not new:
            break
        label = ""
        if used_roots:
            base = type(root).__name__
            labels[base] = labels.get(base, 0) + 1
            label = f"{base}{labels[base] if labels[base] > 1 else ''}."
        used_roots += 1
        names.update({i: label + n for i, n in new.items()})
    return [(names.get(id(p), f"param_groups.{gi}.{pi}"), p) for gi, pi, p in params]
