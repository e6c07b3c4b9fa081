"""Run every benchmark, one after another, each in its own process.

    python benchmarks/run_all.py            # all five, default settings
    python benchmarks/run_all.py fold_speed layer_overhead

Each benchmark measures its variants side by side in one process and prints
ratios; running them one at a time keeps them from competing for the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = (
    "layer_overhead",
    "tracker_overhead",
    "recalibration_speed",
    "fold_speed",
    "study_speed",
)


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent
    failed = []
    for name in names:
        print(f"\n===== {name} =====", flush=True)
        if subprocess.run([sys.executable, str(here / f"{name}.py")], check=False).returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
