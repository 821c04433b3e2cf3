"""Run every benchmark in bench/ once, short settings, and print each one's last line (its ratio).

    .venv/bin/python bench/run_all.py [--only NAME,...] [--full] [--timeout 900]

`make bench` runs this. Every `bench/*.py` except this file and helpers
(names starting with `_`) runs in its own process, one after another (they
time things: never two at once), from the repository root, its output shown
as it comes. A script whose source defines `--quick` gets `--quick`; the
scripts in QUICK_ARGS get the short settings there; any other runs with its
defaults, which must then be its short run. `--full` runs them all with
their defaults. A script that exits non-zero or runs past `--timeout`
seconds counts as failed. At the end a table gives each script's seconds,
exit status and last line; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

QUICK_ARGS = {  # short runs of the scripts without `--quick` whose defaults are long
    "batched_eval.py": ["--repeats", "1", "--gen-copies", "2"],
    "drift_runtime.py": ["--n", "1000"],
    "bluegreen_load.py": ["--requests", "400"],
    "soak.py": ["--duration", "90"],
}


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != Path(__file__).name)
    if only:
        names = {n if n.endswith(".py") else f"{n}.py" for n in only}
        unknown = names - {p.name for p in found}
        if unknown:
            sys.exit(f"--only {', '.join(sorted(unknown))}: no such benchmark in bench/ "
                     f"(there are {', '.join(p.stem for p in found)})")
        found = [p for p in found if p.name in names]
    return found


def quick_args(path: Path) -> list[str]:
    if '"--quick"' in path.read_text(encoding="utf-8"):
        return ["--quick"]
    return QUICK_ARGS.get(path.name, [])


def run(path: Path, args: list[str], timeout: float) -> tuple[int, float, str]:
    """(exit status, seconds, last non-empty output line); the output is echoed as it comes."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-u", str(path), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    expired = threading.Event()

    def kill() -> None:  # the script and whatever it started (servers), even if it prints nothing
        expired.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    last = ""
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            sys.stdout.write("  " + line)
            sys.stdout.flush()
            if line.strip():
                last = line.strip()
        rc = proc.wait()
    finally:
        timer.cancel()
    if expired.is_set():
        rc, last = 124, f"timed out after {timeout:.0f} s"
    return rc, time.perf_counter() - t0, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated script names (with or without .py)")
    ap.add_argument("--full", action="store_true", help="each script's default settings, not the short ones")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per script")
    args = ap.parse_args()

    results = []
    t0 = time.perf_counter()
    for path in scripts(args.only.split(",") if args.only else None):
        extra = [] if args.full else quick_args(path)
        print(f"== {path.name} {' '.join(extra)}".rstrip(), flush=True)
        rc, secs, last = run(path, extra, args.timeout)
        print(f"== {path.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {secs:.0f} s\n", flush=True)
        results.append((path.name, rc, secs, last))

    width = max(len(r[0]) for r in results) if results else 10
    print(f"{'benchmark':{width}} {'s':>5} {'exit':>4}  last line")
    for name, rc, secs, last in results:
        print(f"{name:{width}} {secs:5.0f} {rc:4}  {last}")
    failed = [r[0] for r in results if r[1] != 0]
    print(f"{len(results)} benchmarks in {time.perf_counter() - t0:.0f} s; "
          + (f"failed: {', '.join(failed)}" if failed else "all ok"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
