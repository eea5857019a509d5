"""Start-up: wall time of short ``gasnet`` commands, each in a fresh process.

``gasnet --help`` and ``gasnet stages`` (every stage, engine and reader registered and
described) import what they need only; torch, specutils and numba load when a stage or
engine first runs. The baseline, in the same run, is ``gasnet stages`` with those three
libraries imported first, as every command did before they were deferred. Best of
``--repeat`` runs each.

    python benchmarks/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _common import machine, table

COMMANDS = {
    "gasnet --help": "main(['--help'])",
    "gasnet stages": "main(['stages'])",
    "gasnet stages, torch + specutils + numba imported first (baseline)":
        "import torch, specutils, numba; main(['stages'])",
}


def wall_seconds(code: str, repeat: int) -> float:
    """Best wall time of ``repeat`` fresh interpreters running ``code`` (with ``main``)."""
    script = f"from gasnet_plugin.cli import main\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    times = {name: wall_seconds(code, args.repeat) for name, code in COMMANDS.items()}
    baseline = times["gasnet stages, torch + specutils + numba imported first (baseline)"]
    print(f"machine: {machine()}; best of {args.repeat} fresh processes")
    print(table([(name, f"{seconds:.2f}", f"{baseline / seconds:.1f}x")
                 for name, seconds in times.items()],
                ("command", "wall seconds", "vs baseline")))


if __name__ == "__main__":
    main()
