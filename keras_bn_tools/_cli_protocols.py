"""What the command line's PROTOCOL arguments name: a built-in protocol, the user's
`Protocol` as `MODULE:ATTR` or `FILE.py:ATTR`, or a saved study.

- `MODULE:ATTR`: `MODULE` is imported with the current directory on the path
  (as `python -m` would).
- `FILE.py:ATTR` (any path ending in `.py`): the file is run as a module named
  after it, with its directory first on the path (as `python FILE.py` would), so
  that it can import its neighbours.
- A saved study: a results directory (holding `results.json`) or the JSON file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from keras_bn_tools._cli_output import UsageError

__all__ = ["builtin_protocol", "saved_study", "user_protocol"]


def builtin_protocol(name: str) -> Any:
    from keras_bn_tools.studies import PROTOCOLS

    try:
        return PROTOCOLS[name]
    except ModuleNotFoundError as error:
        raise UsageError(f"the {name} protocol is not available here ({error})") from None


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(f"FILE.py:ATTR: no file {str(path)!r}")
    name = path.stem if path.stem.isidentifier() else "user_protocol"
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # as `python FILE.py` would
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise UsageError(
            f"FILE.py:ATTR: running {str(path)!r} failed: {type(error).__name__}: {error}"
        ) from None
    return module


def _import_module(name: str) -> Any:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise UsageError(f"MODULE:ATTR: cannot import {name!r}: {error}") from None


def user_protocol(spec: str) -> Any:
    """The `Protocol` named by `MODULE:ATTR` or `FILE.py:ATTR`."""
    from keras_bn_tools.studies import Protocol

    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise UsageError(
            f"MODULE:ATTR: expected e.g. my_study:PROTOCOL or path/to/my_study.py:PROTOCOL, "
            f"got {spec!r}"
        )
    module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    protocol = getattr(module, attr, None)
    if not isinstance(protocol, Protocol):
        raise UsageError(
            f"MODULE:ATTR: {spec!r} must name a keras_bn_tools.studies.Protocol, got "
            f"{type(protocol).__name__}"
        )
    return protocol


def saved_study(target: str) -> Any | None:
    """The `StudyResult` saved at `target` (a results directory or its JSON file), or
    None if `target` is neither."""
    path = Path(target)
    if path.is_dir():
        path = path / "results.json"
    if not (path.is_file() and path.suffix == ".json"):
        return None
    from keras_bn_tools.studies import StudyResult

    try:
        return StudyResult.from_json(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(
            f"{str(path)!r} is not a saved study: {type(error).__name__}: {error}"
        ) from None
