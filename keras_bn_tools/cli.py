"""The `keras-bn-tools` command.

- `keras-bn-tools circles`: run the circles study (the tutorial's three models
  over 10 seeds by default), print the table, and write `results.json`,
  `results.csv`, `runs.csv`, `table.md` and learning-curve plots under `--out`.
- `keras-bn-tools summary`: print the Keras summary of each config's model.

Arguments are checked, and `--out` is checked to be writable, before anything
runs; bad input prints one line on stderr and exits with status 2. Results are
written to a temporary directory next to `--out` and moved into place only
when everything is written, so an interrupted or failed run leaves nothing
half-written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]

PROG = "keras-bn-tools"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad input found after parsing (reported like argparse's errors, exit status 2)."""


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse `type` that accepts integers >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what} (>= {minimum}), got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _add_configs_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    from keras_bn_tools.studies.circles import CONFIGS, DEFAULT_CONFIGS

    parser.add_argument(
        "--configs",
        nargs="+",
        metavar="NAME",
        default=list(DEFAULT_CONFIGS),
        choices=[*CONFIGS, "all"],
        help=f"configs to {verb}, or 'all' (default: {' '.join(DEFAULT_CONFIGS)})",
    )


def _config_names() -> list[str]:
    # The study module imports NumPy only at import time: no TensorFlow for --help.
    from keras_bn_tools.studies.circles import CONFIGS

    return list(CONFIGS)


def _build_parser() -> argparse.ArgumentParser:
    from keras_bn_tools import __version__
    from keras_bn_tools.studies.circles import CONFIGS, SHUFFLES

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Batch normalization tools for Keras 3: the circles study and friends.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    config_help = "; ".join(f"{name}: {c.description}" for name, c in CONFIGS.items())
    circles = commands.add_parser(
        "circles",
        help="run the circles study and write its table, results and plots",
        description=(
            "Train an MLP on make_circles without BN, with BN after and with BN before the "
            "ReLU (and variants), once per seed, under the tutorial's protocol (SGD lr 0.01 "
            "momentum 0.9, batch 32, 100 epochs); print a table of final accuracies and "
            "epochs to 80% test accuracy; write results.json, results.csv (one row per run "
            "per epoch), runs.csv (one row per run), table.md, accuracy.png and loss.png "
            "(mean over seeds with a ± 1 sd band) under --out."
        ),
        epilog=f"Configs: {config_help}.",
    )
    _add_configs_argument(circles, "run")
    circles.add_argument(
        "--seeds",
        type=_positive_int,
        default=10,
        metavar="N",
        help="number of seeds per config: seeds FIRST..FIRST+N-1 (default: 10)",
    )
    circles.add_argument(
        "--first-seed",
        type=_non_negative_int,
        default=0,
        metavar="FIRST",
        help="first seed (default: 0)",
    )
    circles.add_argument(
        "--epochs", type=_positive_int, default=100, metavar="E", help="epochs (default: 100)"
    )
    circles.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="B",
        help="batch size (default: 32)",
    )
    circles.add_argument(
        "--engine",
        choices=["compiled", "fit"],
        default="compiled",
        help="'compiled': each run as one TensorFlow graph (fast, the default); "
        "'fit': plain model.fit",
    )
    circles.add_argument(
        "--shuffle",
        choices=list(SHUFFLES),
        default="once",
        help="'once' (default): what model.fit(shuffle=True) does under a seed, one "
        "permutation reused every epoch; 'epoch': a new one every epoch; 'none'",
    )
    circles.add_argument(
        "--out",
        default="circles_results",
        metavar="DIR",
        help="directory for the results (created if needed; default: ./circles_results)",
    )
    circles.add_argument(
        "--moving-stats",
        action="store_true",
        help="also write moving_stats.npz: every BN statistic at the end of every epoch",
    )
    circles.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    circles.set_defaults(handler=_run_circles)

    summary = commands.add_parser(
        "summary",
        help="print the Keras model summary of each circles config",
        description="Print the layers of each circles config's model (Keras model.summary).",
    )
    _add_configs_argument(summary, "show")
    summary.set_defaults(handler=_run_summary)
    return parser


def _expand_configs(names: Sequence[str]) -> list[str]:
    if "all" in names:
        return _config_names()
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen


# --------------------------------------------------------------------------- output directory


def _check_out(out: Path) -> Path:
    """Check that `out` can be created or written; return the existing directory in which
    the staging directory goes (`out` itself, or its nearest existing ancestor)."""
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory")
    anchor = out.absolute()
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise UsageError(f"--out {str(out)!r}: {str(anchor)!r} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r}: {str(anchor)!r} is not writable")
    return anchor


def _make_staging(anchor: Path) -> Path:
    try:
        staging = Path(tempfile.mkdtemp(prefix=".keras-bn-tools-circles-", dir=anchor))
    except OSError as error:
        raise UsageError(f"--out: cannot write in {str(anchor)!r}: {error.strerror}") from None
    # mkdtemp makes it private (0o700); it may become --out itself, so use the umask.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def _publish(staging: Path, out: Path) -> list[Path]:
    """Move every file of `staging` into `out` (each with an atomic rename)."""
    out = out.expanduser()
    names = sorted(p.name for p in staging.iterdir())
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(out)
            return [out / name for name in names]
        except OSError:
            out.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(staging / name, out / name)
    return [out / name for name in names]


# --------------------------------------------------------------------------- commands


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _run_circles(args: argparse.Namespace) -> int:
    configs = _expand_configs(args.configs)
    out = Path(args.out)
    anchor = _check_out(out)  # --out itself if it exists, else its nearest existing ancestor
    _quiet_tensorflow()
    import numpy as np

    from keras_bn_tools.studies.circles import run_study

    staging = _make_staging(anchor)
    try:
        result = run_study(
            configs=configs,
            seeds=range(args.first_seed, args.first_seed + args.seeds),
            epochs=args.epochs,
            batch_size=args.batch_size,
            engine=args.engine,
            progress=not args.no_progress,
            shuffle=args.shuffle,
        )
        table = result.table()
        result.to_json(staging / "results.json")
        result.to_csv(staging / "results.csv", per="epoch")
        result.to_csv(staging / "runs.csv", per="run")
        (staging / "table.md").write_text(table + "\n", encoding="utf-8")
        result.plot(staging / "accuracy.png", metrics=("accuracy", "val_accuracy"))
        result.plot(staging / "loss.png", metrics=("loss", "val_loss"))
        if args.moving_stats:
            arrays = result.moving_stats_arrays()
            if arrays:
                np.savez_compressed(staging / "moving_stats.npz", **arrays)
        written = _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(table)
    print(
        f"\n{len(result.runs)} runs in {result.seconds:.1f} s. Wrote "
        f"{', '.join(p.name for p in written)} to {out.expanduser()}",
        file=sys.stderr,
    )
    return EXIT_OK


def _run_summary(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from keras_bn_tools.studies.circles import CONFIGS

    for name in _expand_configs(args.configs):
        config = CONFIGS[name]
        print(f"{name}: {config.description}")
        config.build().summary(print_fn=lambda line, *_, **__: print(line))
        print()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default `sys.argv[1:]`); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and argparse's usage errors
        return int(exit_.code) if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # no traceback for people; set KERAS_BN_TOOLS_DEBUG=1 for one
        if os.environ.get("KERAS_BN_TOOLS_DEBUG"):
            raise
        print(
            f"{PROG} {args.command}: error: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
