"""The `keras-bn-tools` command line: its arguments, parsed before anything heavy loads.

The console script `keras-bn-tools` (and `python -m keras_bn_tools_cli`) runs
`main`. It is a top-level module of the distribution, outside the
`keras_bn_tools` package, because `import keras_bn_tools` imports Keras and its
backend (the package registers its layers with `keras.saving` at import), which
takes seconds: `keras-bn-tools --help`, `--version` and usage errors are
answered from the standard library alone. Only a command that runs imports
`keras_bn_tools.cli` (and with it Keras), with TensorFlow's C++ start-up lines
filtered out of stderr and its log level at "errors only" unless the user set
`TF_CPP_MIN_LOG_LEVEL`. `python -m keras_bn_tools` runs the same `main`, after
importing the package (so TensorFlow's start-up lines may show first).

- `keras-bn-tools circles|digits|sequence [options]`: run a built-in study.
- `keras-bn-tools study MODULE:ATTR [options]`: run the user's `Protocol`.
- `keras-bn-tools summary [WHAT] [--configs ...]`: a saved study's table, or each
  config's model of a protocol (built-in, `MODULE:ATTR` or `FILE.py:ATTR`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from types import ModuleType

__all__ = ["ENGINES", "builtin_protocols", "main"]

PROG = "keras-bn-tools"
EXIT_USAGE = 2
#: Exit statuses above this one are 128 + the number of the signal that stopped a study.
EXIT_STOPPED = 128
#: `keras_bn_tools.studies.engines.ENGINES`, which the parser cannot import without
#: importing Keras (tests/test_cli.py keeps them equal).
ENGINES = ("auto", "compiled", "fit")
#: `keras_bn_tools._validation.MAX_SEED` (a test keeps them equal).
MAX_SEED = 2**32 - 1

#: TensorFlow's start-up lines: some are printed by its shared libraries' static
#: initializers, before absl logging starts, whatever TF_CPP_MIN_LOG_LEVEL says.
STARTUP_NOISE = re.compile(
    r"oneDNN custom operations|cudart_stub|cuda drivers|cuInit|absl::InitializeLog|"
    r"cpu_feature_guard|TensorFlow binary is optimized|To enable the following instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags"
)


def builtin_protocols() -> tuple[str, ...]:
    """The built-in protocols' names, read from the package metadata (the entry points
    of `keras_bn_tools.studies.registry.ENTRY_POINT_GROUP`, listed once in
    `pyproject.toml`) without importing the package, which would load Keras."""
    group = importlib.metadata.entry_points(group="keras_bn_tools.protocols")
    return tuple(entry.name for entry in group)


def _version() -> str:
    try:
        return importlib.metadata.version("keras-bn-tools")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path
        return "unknown (not installed)"


def _int_option(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: an integer in `[minimum, maximum]`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            high = "" if maximum is None else f" and <= {maximum}"
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{high}, got {text}")
        return value

    return parse


# --------------------------------------------------------------------------- parser


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        nargs="+",
        metavar="NAME",
        help="configs to run, or 'all' (default: the protocol's defaults)",
    )
    parser.add_argument(
        "--seeds",
        type=_int_option(1, MAX_SEED + 1),
        default=None,
        metavar="N",
        help="seeds per config: FIRST..FIRST+N-1 (default: 10; sigmoid-mlp 3, small-batch 1)",
    )
    parser.add_argument(
        "--first-seed",
        type=_int_option(0, MAX_SEED),
        default=0,
        metavar="FIRST",
        help="first seed (default: 0)",
    )
    parser.add_argument(
        "--epochs",
        type=_int_option(1, 10**6),
        metavar="E",
        help="epochs per run (default: the protocol's)",
    )
    parser.add_argument(
        "--batch-size",
        type=_int_option(1, 10**8),
        metavar="B",
        help="batch size (default: the protocol's)",
    )
    parser.add_argument(
        "--engine",
        choices=list(ENGINES),
        default="auto",
        help="'auto' (default): the compiled engine on TensorFlow and JAX, "
        "'fit' elsewhere; 'compiled': each run compiled whole; 'fit': model.fit",
    )
    parser.add_argument(
        "--shuffle",
        choices=["epoch", "once", "none"],
        default="epoch",
        help="'epoch' (default): a fresh order of the training rows every "
        "epoch (the tutorial's); 'once': one order reused every epoch; 'none'",
    )
    _add_output_options(parser)
    _add_scaling_options(parser)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or -1, got {text}")
    return value


def _add_scaling_options(parser: argparse.ArgumentParser) -> None:
    """`--jobs`, `--cluster`, `--address`, `--resume`, `--compile-cache`
    (checked further by `keras_bn_tools._cli_scaling`; docs/scaling.md)."""
    parser.add_argument(
        "--jobs", type=_jobs, default=1, metavar="N",
        help="processes that run the study (-1: every core; default: 1); results are "
        "identical, run for run, whatever N",
    )  # fmt: skip
    parser.add_argument(
        "--cluster", choices=["loky", "dask", "ray"], default="loky",
        help="where the --jobs run: 'loky' (default: local processes), 'dask' (a Dask "
        "cluster: --address, else a LocalCluster of --jobs workers; pip install "
        "'keras-bn-tools[dask]') or 'ray' (pip install 'keras-bn-tools[ray]')",
    )  # fmt: skip
    parser.add_argument(
        "--address", metavar="ADDR",
        help="the running Dask scheduler (tcp://host:8786) or Ray cluster (ray://host:10001) "
        "for --cluster",
    )  # fmt: skip
    parser.add_argument(
        "--resume", action="store_true",
        help="finish the study whose finished runs --out keeps in runs/ (each saved as it "
        "ends): run only the missing ones; a different study is refused",
    )  # fmt: skip
    parser.add_argument(
        "--compile-cache", metavar="DIR",
        help="JAX's persistent compilation cache for the study's programs (default: "
        "$KERAS_BN_TOOLS_COMPILE_CACHE, else ~/.cache/keras-bn-tools/jax-compile-cache; "
        "'off': none)",
    )  # fmt: skip


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="results directory (default: ./PROTOCOL_results); created, or "
        "replaced as a whole with --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing results directory (one with results.json)",
    )
    parser.add_argument(
        "--moving-stats",
        action="store_true",
        help="also write moving_stats.npz: every BN statistic after every epoch",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _protocol_epilog(name: str) -> str | None:
    # The one place the parser needs the package: the protocol's own description
    # and configs, for `keras-bn-tools NAME --help` only.
    return _load_cli().protocol_epilog(name)


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Batch normalization tools for Keras 3: reproducible BN studies."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    builtin = builtin_protocols()
    for name in builtin:
        # Only the protocol being run is imported (for its --help): --help stays fast.
        asks_help = argv[:1] == [name] and not {"-h", "--help"}.isdisjoint(argv)
        epilog = _protocol_epilog(name) if asks_help else None
        what = f"Run the {name} study: each config once per seed; print the table; write files."
        sub = commands.add_parser(
            name, help=f"run the {name} study", epilog=epilog, description=what
        )
        _add_study_options(sub)
        sub.set_defaults(protocol=name)
    study = commands.add_parser(
        "study", help="run your own Protocol: keras-bn-tools study MODULE:ATTR|FILE.py:ATTR",
        description="Run a keras_bn_tools.studies.Protocol of yours, named MODULE:ATTR "
        "(MODULE is imported with the current directory on the path) or FILE.py:ATTR "
        "(the file is run with its directory on the path).",
    )  # fmt: skip
    study.add_argument("protocol", metavar="MODULE:ATTR",
                       help="e.g. my_study:PROTOCOL or path/to/my_study.py:PROTOCOL")  # fmt: skip
    _add_study_options(study)
    summary = commands.add_parser(
        "summary", help="print a saved study's table, or the model of each config",
        description="A saved study (a results directory or its results.json): print its "
        "table. A protocol (built-in, MODULE:ATTR or FILE.py:ATTR): print each config's model.",
    )  # fmt: skip
    summary.add_argument("protocol", nargs="?", default="circles", metavar="WHAT",
                         help="a saved study, a built-in protocol "
                         f"({', '.join(builtin)}), MODULE:ATTR or FILE.py:ATTR "
                         "(default: circles)")  # fmt: skip
    summary.add_argument("--configs", nargs="+", metavar="NAME", help="configs (default: all)")
    return parser


def _import_quietly(module: str) -> None:
    """Import `module` with the process's stderr (fd 2) captured; print back every line
    that is not TensorFlow start-up noise, so that real errors still show."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to quiet
        saved = None
    with tempfile.TemporaryFile() as capture:
        if saved is not None:
            os.dup2(capture.fileno(), 2)
        try:
            importlib.import_module(module)
        finally:
            if saved is not None:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [
                line for line in text.splitlines(keepends=True) if not STARTUP_NOISE.search(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))


def _load_cli() -> ModuleType:
    """`keras_bn_tools.cli`, imported only now (see the module docstring), with Keras's
    backend start-up quieted unless the user set `TF_CPP_MIN_LOG_LEVEL`."""
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        _import_quietly("keras")  # and with it the backend, whose start-up lines these are
    import keras_bn_tools.cli  # deferred on purpose: the reason this module exists

    return keras_bn_tools.cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default `sys.argv[1:]`); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and argparse's usage errors
        return int(exit_.code) if isinstance(exit_.code, int) else EXIT_USAGE
    status = _load_cli().run(args)
    if status > EXIT_STOPPED:
        # Stopped by a signal mid-training: `--out` is already as it was. The backend's
        # runtime threads were interrupted mid-step, and tearing the interpreter down
        # around them can crash or hang (seen with TensorFlow: "free(): invalid next size",
        # and a child that never exited), so leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
