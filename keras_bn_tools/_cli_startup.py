"""Quiet TensorFlow's C++ start-up logging, only when this process is the command line.

`keras_bn_tools/__init__.py` imports this module first, so that it runs before
anything imports TensorFlow, and changes nothing for a program that merely
imports the library: the environment is touched only when the process was
started as `keras-bn-tools ...` or `python -m keras_bn_tools ...`, and never
when the user set `TF_CPP_MIN_LOG_LEVEL` themselves.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile

__all__ = ["is_cli_process", "quiet_startup"]

_SCRIPT_NAMES = ("keras-bn-tools", "keras-bn-tools.exe", "keras-bn-tools-script.py")
_MODULE_NAMES = ("keras_bn_tools", "keras_bn_tools.cli")


def is_cli_process(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """True if the process is the `keras-bn-tools` script or `python -m keras_bn_tools`."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if argv and os.path.basename(argv[0]) in _SCRIPT_NAMES:
        return True
    # `python -m keras_bn_tools`: runpy imports the package while sys.argv[0] is "-m";
    # the interpreter's own command line says which module that is.
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None) in _MODULE_NAMES
        if arg.startswith("-m"):
            return arg[2:] in _MODULE_NAMES
        if arg in ("-X", "-W", "--check-hash-based-pycs"):
            next(args, None)  # the option's value
        elif arg.startswith("-c") or not arg.startswith("-"):
            return False  # -c code or a script runs: the options after it are its own
    return False


#: TensorFlow's start-up lines: some are printed by its shared libraries' static
#: initializers, before absl logging starts, whatever TF_CPP_MIN_LOG_LEVEL says.
STARTUP_NOISE = re.compile(
    r"oneDNN custom operations|cudart_stub|cuda drivers|cuInit|absl::InitializeLog|"
    r"cpu_feature_guard|TensorFlow binary is optimized|To enable the following instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags"
)


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
        except ImportError:
            pass
        finally:
            if saved is not None:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", errors="replace")
    kept = [line for line in text.splitlines(keepends=True) if not STARTUP_NOISE.search(line)]
    if kept:
        sys.stderr.write("".join(kept))


def quiet_startup() -> bool:
    """In the CLI process only, and unless the user set `TF_CPP_MIN_LOG_LEVEL`: hide
    TensorFlow's C++ log lines (level 3) and its start-up lines (import it with
    stderr filtered). Returns whether it did.
    """
    if not is_cli_process() or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    _import_quietly("tensorflow")
    return True


quiet_startup()
