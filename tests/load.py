"""Run commands on a busy machine: N CPU-bound processes run beside them (`make test-loaded`).

    python tests/load.py --procs 2 --run "pytest -q" --run "pytest -q -m 'slow or not slow'"
    python tests/load.py --procs 2            # only the load, until Ctrl-C

Each command runs after the previous one ends (all of them run, whatever the exit status of the others);
the wall time of each is printed, then how much CPU the busy processes burned meanwhile (so that the load was
real). The busy processes are stopped at the end, also on failure or Ctrl-C, and each also stops by itself as
soon as this process is gone. Exit status: 0 when every command passed, else that of the first that failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

# A pure Python loop (no numpy: no library threads): one busy core each. It checks every ~0.1 s of work
# that the process that started it is still there, and ends when it is not.
BUSY = """
import os, sys
parent = int(sys.argv[1])
x = 1
while os.getppid() == parent:
    for _ in range(200_000):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
"""


def start(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", BUSY, str(os.getpid())]) for _ in range(n)]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=2, help="CPU-bound processes to run (default 2)")
    ap.add_argument("--run", action="append", default=[], metavar="CMD", help="a shell command; repeatable")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops the load as Ctrl-C does
    busy = start(args.procs)
    pids = " ".join(str(p.pid) for p in busy)
    print(f"[load] {args.procs} CPU-bound processes (pids {pids}) on {os.cpu_count()} CPUs", flush=True)
    status = 0
    results = []
    cpu0 = [cpu_seconds(p.pid) for p in busy]
    t0 = time.monotonic()
    try:
        if not args.run:
            while True:
                time.sleep(3600)
        for cmd in args.run:
            print(f"[load] running: {cmd}", flush=True)
            t = time.monotonic()
            rc = subprocess.run(cmd, shell=True, check=False).returncode
            took = time.monotonic() - t
            results.append((cmd, rc, took))
            verdict = "passed" if rc == 0 else f"FAILED (exit {rc})"
            print(f"[load] {verdict} in {took:.0f} s: {cmd}", flush=True)
            status = status or rc
    except KeyboardInterrupt:
        status = status or 130
    finally:
        cpu1 = [cpu_seconds(p.pid) for p in busy]
        wall = time.monotonic() - t0
        stop(busy)
        print("[load] summary:", flush=True)
        for cmd, rc, took in results:
            minutes, seconds = divmod(round(took), 60)
            verdict = "ok    " if rc == 0 else f"exit {rc}"
            print(f"[load]   {minutes:3d} min {seconds:02d} s  {verdict}  {cmd}", flush=True)
        burned = [b - a for a, b in zip(cpu0, cpu1, strict=True) if a is not None and b is not None]
        if burned:
            each = ", ".join(f"{b:.0f}" for b in burned)
            print(f"[load]   the busy processes used {each} CPU seconds in {wall:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
