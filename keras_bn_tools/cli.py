"""What the `keras-bn-tools` command runs, once `keras_bn_tools_cli` parsed its arguments.

- `keras-bn-tools PROTOCOL [options]`: run a built-in study (`studies.registry.BUILTIN`).
  `sigmoid-mlp` and `small-batch` are reproductions of published BN experiments
  (`studies.experiments`): they also write their own table, data and plots.
- `keras-bn-tools study MODULE:ATTR|FILE.py:ATTR [options]`: run the user's
  `Protocol` (`_cli_protocols` says how each is found).
- `keras-bn-tools summary [WHAT] [--configs ...]`: a saved study's table, or each
  config's model of a protocol (built-in, `MODULE:ATTR` or `FILE.py:ATTR`).

Each study prints its table and writes `results.json`, `results.csv` (one row
per run per epoch), `runs.csv` (one row per run), `table.md`, `METRIC.png`
(`accuracy.png`, `mae.png`, ...) and `loss.png` under `--out`. Every option is
checked before any work: bad input prints one line naming the option and exits
with status 2. Results are
written to a hidden staging directory next to `--out` and moved into place
only when everything is written; SIGINT, SIGTERM and SIGHUP remove the
staging directory, so a stopped run leaves `--out`'s results as they were. Each
finished run is saved in `--out`'s `runs/` folder as it ends: `--resume`
finishes an interrupted study (`_cli_scaling`: `--jobs`, `--cluster`,
`--resume`, `--compile-cache`).

The argument parser lives in the top-level module `keras_bn_tools_cli` (the
console script's entry point), which imports this module, and with it Keras,
only after the arguments parsed: `--help` does not wait for a backend to load.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras_bn_tools._cli_output import (
    Stopped,
    UsageError,
    check_out,
    make_staging,
    publish,
    remove_staging,
    stop_on_signals,
)
from keras_bn_tools._cli_protocols import builtin_protocol, saved_study, user_protocol
from keras_bn_tools._cli_scaling import check_scaling, prepare_out, scaled
from keras_bn_tools._validation import MAX_SEED
from keras_bn_tools.studies.registry import BUILTIN

__all__ = ["OUTPUTS", "UsageError", "protocol_epilog", "run"]

PROG = "keras-bn-tools"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_KEPT = "--out's results are as they were; its finished runs (runs/) are kept for --resume"
OUTPUTS = ("results.json", "results.csv", "runs.csv", "table.md", "accuracy.png", "loss.png")


# --------------------------------------------------------------------------- checks


def _configs(protocol, names: Sequence[str] | None) -> list[str] | None:
    if names is None:
        return None
    if "all" in names:
        return list(protocol.configs)
    unknown = [n for n in names if n not in protocol.configs]
    if unknown:
        raise UsageError(
            f"--configs: unknown {protocol.name} config(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(protocol.configs)} or all"
        )
    return list(dict.fromkeys(names))


def _check_engine(engine: str) -> None:
    from keras_bn_tools.studies.engines import EngineUnavailableError, resolve_engine

    try:
        resolve_engine(engine)
    except EngineUnavailableError as error:
        import keras

        raise UsageError(
            f"--engine {engine}: no compiled engine on the {keras.backend.backend()!r} "
            f"backend; use --engine fit (or --engine auto)"
        ) from error


def _write(result: Any, staging: Path, moving_stats: bool) -> str:
    table = result.table()
    result.to_json(staging / "results.json")
    result.to_csv(staging / "results.csv", per="epoch")
    result.to_csv(staging / "runs.csv", per="run")
    (staging / "table.md").write_text(table + "\n", encoding="utf-8")
    result.plot(staging / f"{result.metric}.png")  # accuracy.png, mae.png, ...
    result.plot(staging / "loss.png", metrics=("loss", "val_loss"))
    if moving_stats and (arrays := result.moving_stats_arrays()):
        import numpy as np

        np.savez_compressed(staging / "moving_stats.npz", **arrays)
    return table


# --------------------------------------------------------------------------- commands


def _run_study(args: argparse.Namespace) -> int:
    from keras_bn_tools.studies.experiments import DEFAULT_SEEDS, EXPERIMENTS, experiment_runner

    if args.seeds is None:
        args.seeds = DEFAULT_SEEDS.get(args.protocol, 10) if args.command != "study" else 10
    if args.first_seed + args.seeds - 1 > MAX_SEED:
        raise UsageError(
            f"--seeds/--first-seed: seeds {args.first_seed}..{args.first_seed + args.seeds - 1} "
            f"go past {MAX_SEED} (2**32 - 1)"
        )
    user = args.command == "study"
    protocol = user_protocol(args.protocol) if user else builtin_protocol(args.protocol)
    configs = _configs(protocol, args.configs)
    out = Path(args.out if args.out is not None else f"{protocol.name}_results")
    anchor = check_out(out, args.overwrite, args.resume)
    _check_engine(args.engine)
    import keras

    from keras_bn_tools.studies import run_study
    from keras_bn_tools.studies.store import CorruptRunFileError, StudyMismatchError

    experiment = None if user else EXPERIMENTS.get(protocol.name)
    cache = check_scaling(args, keras.backend.backend(), experiment=experiment is not None)
    prepare_out(out, overwrite=args.overwrite)
    staging = make_staging(anchor, protocol.name)
    try:
        run = experiment_runner(protocol.name) if experiment else run_study
        scaling = {} if experiment else {"n_jobs": args.jobs, "out": out, "resume": args.resume}
        try:
            with scaled(args, cache):
                result = run(
                    protocol, configs, range(args.first_seed, args.first_seed + args.seeds),
                    epochs=args.epochs, batch_size=args.batch_size, engine=args.engine,
                    shuffle=args.shuffle, progress=not args.no_progress, **scaling,
                )  # fmt: skip
        except (StudyMismatchError, CorruptRunFileError) as error:  # found before training
            raise UsageError(f"--out {str(out)!r} (--resume): {error}") from None
        if experiment:  # its own table, data and plots beside the study's files
            extra, result = result, result.study
            extra.write(staging)
        table = _write(result, staging, args.moving_stats)
        if experiment:
            table = f"{table}\n\n{extra.table()}"
        publish(staging, out)
    finally:
        remove_staging(staging)
    print(table)
    print(
        f"\n{len(result.runs)} runs in {result.seconds:.1f} s (engine {result.engine}). "
        f"Wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}",
        file=sys.stderr,
    )
    return EXIT_OK


def _run_summary(args: argparse.Namespace) -> int:
    study = saved_study(args.protocol)
    if study is not None:
        if args.configs is not None:
            raise UsageError("--configs: a saved study's table shows every config it ran")
        print(study.table())
        return EXIT_OK
    if args.protocol in BUILTIN:
        protocol = builtin_protocol(args.protocol)
    elif ":" in args.protocol:
        protocol = user_protocol(args.protocol)
    else:
        raise UsageError(
            f"WHAT: {args.protocol!r} is neither a saved study (a directory with results.json, "
            f"or the file), a built-in protocol ({', '.join(BUILTIN)}), MODULE:ATTR nor "
            f"FILE.py:ATTR"
        )
    for name in _configs(protocol, args.configs) or list(protocol.configs):
        print(f"{name}: {protocol.config(name).description}")
        protocol.build(name).summary(print_fn=lambda line, *_, **__: print(line))
        print()
    return EXIT_OK


def protocol_epilog(name: str) -> str | None:
    """The `--help` epilog of a built-in protocol: its description and configs."""
    try:
        protocol = builtin_protocol(name)
    except UsageError:
        return None
    configs = "; ".join(f"{c}: {protocol.config(c).description}" for c in protocol.configs)
    return f"{protocol.description} Configs: {configs}."


def run(args: argparse.Namespace) -> int:
    """Run the command that `keras_bn_tools_cli` parsed into `args`; return the exit status.

    Bad input found here prints one line and returns 2; SIGINT, SIGTERM and SIGHUP
    leave `--out` as it was. The command line itself is `keras_bn_tools_cli.main`.
    """
    handler = _run_summary if args.command == "summary" else _run_study
    where = f"{PROG} {args.command}"
    try:
        with stop_on_signals():
            return handler(args)
    except UsageError as error:
        print(f"{where}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{where}: interrupted; {_KEPT}", file=sys.stderr)
        return 128 + signal.SIGINT
    except Stopped as stop:
        print(f"{where}: stopped by signal {stop.signum}; {_KEPT}", file=sys.stderr)
        return 128 + stop.signum
    except Exception as error:  # no traceback for people; KERAS_BN_TOOLS_DEBUG=1 shows one
        if os.environ.get("KERAS_BN_TOOLS_DEBUG"):
            raise
        print(f"{where}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
