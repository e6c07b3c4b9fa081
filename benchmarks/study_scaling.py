"""Scaling a study out: jobs, Dask, resume and JAX's compilation cache, side by side.

    python benchmarks/study_scaling.py            # everything (about 10 minutes on 2 cores)
    python benchmarks/study_scaling.py --quick    # 3 seeds per config instead of 10

Every measurement is one `keras-bn-tools` command in a fresh process, as a user
runs it, and the time compared is the study's own (the closing line's "N runs in
X s", which includes starting the workers); the wall time of the whole command
(imports, cluster start-up) is printed beside it. Printed ratios and targets:

1. digits default study (4 configs x 10 seeds), `--jobs 2` vs `--jobs 1` (target <= 0.75).
2. the same through a Dask `LocalCluster` of 2 workers (`--cluster dask --jobs 2`)
   vs `--jobs 2` with loky (target <= 1.15).
3. resume: the `--jobs 1` study killed (SIGKILL) once half its runs are saved, then
   `--resume`d, vs the whole study (target <= 0.6, the resumed part's study time).
4. JAX circles (3 configs x 10 seeds x 100 epochs): the second run with the
   persistent compilation cache vs the first, which fills it (target <= 0.4);
   the first (a cold cache: every lookup a miss) vs `--compile-cache off` (what a
   miss costs); and TensorFlow's plain `model.fit` per run (the tutorial's, compile
   included, on the first `--fit-seeds` seeds of each config, times the study's
   runs) vs the warm JAX study (target >= 200).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOSING = re.compile(r"(\d+) runs in ([0-9.]+) s")

_PLAIN_FIT = """
import sys, time
import keras
from keras_bn_tools.studies import PROTOCOLS
protocol = PROTOCOLS["circles"]
(x, y), (tx, ty) = protocol.load_data()
seeds = int(sys.argv[1])
times = []
for config in protocol.default_configs:
    for seed in range(seeds):
        start = time.perf_counter()
        keras.utils.set_random_seed(seed)
        model = protocol.build(config)
        model.compile(optimizer=protocol.optimizer(), loss=protocol.loss, metrics=["accuracy"])
        model.fit(x, y, validation_data=(tx, ty), epochs=protocol.epochs,
                  batch_size=protocol.batch_size, verbose=0)
        times.append(time.perf_counter() - start)
print("PLAIN", sum(times) / len(times))
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg", **extra}


def _cli(args: list[str], **env: str) -> tuple[float, float]:
    """Run `keras-bn-tools ARGS`; return (study seconds, wall seconds)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "keras_bn_tools", *args, "--no-progress"],
                          capture_output=True, text=True, env=_env(**env))  # fmt: skip
    wall = time.perf_counter() - start
    match = CLOSING.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"keras-bn-tools {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return float(match.group(2)), wall


def _killed_at_half(args: list[str], out: Path, runs: int) -> None:
    """Start the study, SIGKILL it once half of its `runs` are saved."""
    process = subprocess.Popen([sys.executable, "-m", "keras_bn_tools", *args, "--no-progress"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=_env())  # fmt: skip
    while len(list((out / "runs").glob("*/seed-*.json"))) < runs // 2:
        if process.poll() is not None:
            raise SystemExit("the study ended before half of its runs were saved")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _row(what: str, value: float, base: float, target: str) -> None:
    print(f"| {what} | {value:.1f} s | {base:.1f} s | {value / base:.2f}x | {target} |",
          flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds per config")
    parser.add_argument("--fit-seeds", type=int, default=1, help="plain-fit runs per config")
    options = parser.parse_args()
    seeds = "3" if options.quick else "10"
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    print("| measured | time | against | ratio | target |\n|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        digits = ["digits", "--seeds", seeds]
        one, one_wall = _cli([*digits, "--out", str(tmp / "j1")])
        two, two_wall = _cli([*digits, "--out", str(tmp / "j2"), "--jobs", "2"])
        _row("digits --jobs 2 vs --jobs 1 (study)", two, one, "<= 0.75x")
        _row("  (whole command)", two_wall, one_wall, "")
        dask, dask_wall = _cli([*digits, "--out", str(tmp / "d"), "--jobs", "2",
                                "--cluster", "dask"])  # fmt: skip
        _row("digits Dask LocalCluster(2) vs loky --jobs 2 (study)", dask, two, "<= 1.15x")
        _row("  (whole command, cluster start-up included)", dask_wall, two_wall, "")
        runs = 4 * int(seeds)
        _killed_at_half([*digits, "--out", str(tmp / "r")], tmp / "r", runs)
        resumed, resumed_wall = _cli([*digits, "--out", str(tmp / "r"), "--resume"])
        _row("digits resumed after half vs whole (study)", resumed, one, "<= 0.6x")
        _row("  (whole command)", resumed_wall, one_wall, "")

        circles = ["circles", "--seeds", seeds]
        cache = str(tmp / "jax-cache")
        off, _ = _cli([*circles, "--out", str(tmp / "c0"), "--compile-cache", "off"],
                      KERAS_BACKEND="jax")  # fmt: skip
        cold, _ = _cli([*circles, "--out", str(tmp / "c1"), "--compile-cache", cache],
                       KERAS_BACKEND="jax")  # fmt: skip
        warm, warm_wall = _cli([*circles, "--out", str(tmp / "c2"), "--compile-cache", cache],
                               KERAS_BACKEND="jax")  # fmt: skip
        _row("JAX circles, second run with the cache vs first", warm, cold, "<= 0.4x")
        _row("JAX circles, first run (cold cache) vs no cache", cold, off, "~1x (a miss)")
        plain = subprocess.run([sys.executable, "-c", _PLAIN_FIT, str(options.fit_seeds)],
                               capture_output=True, text=True,
                               env=_env(KERAS_BACKEND="tensorflow"))  # fmt: skip
        match = re.search(r"PLAIN ([0-9.]+)", plain.stdout)
        if match is None:
            raise SystemExit(f"plain fit failed:\n{plain.stderr[-3000:]}")
        plain_study = float(match.group(1)) * 3 * int(seeds)
        print(f"| TF plain model.fit, {3 * int(seeds)} runs (estimated from "
              f"{3 * options.fit_seeds}) vs warm JAX circles study | {plain_study:.1f} s | "
              f"{warm:.1f} s | {plain_study / warm:.0f}x faster | >= 200x |")  # fmt: skip
        print(f"| (JAX warm: whole command) | {warm_wall:.1f} s | | | |")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
