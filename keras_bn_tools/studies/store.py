"""Save-as-you-go for studies: one crash-safe file per finished run, with its fingerprint.

`run_study(..., out=DIR)` saves each run under `DIR/runs/` the moment it ends,
and `run_study(..., out=DIR, resume=True)` loads the runs saved there and runs
only the others. This module is that folder:

- **Crash-safe.** A run file is written to a temporary file, flushed and
  `fsync`ed, read back and compared byte for byte (a torn write is redone),
  then renamed over its final name with `os.replace` and the folder `fsync`ed:
  a run is either fully on disk or absent. Temporary files left by a killed
  process are removed when the folder is next opened.
- **Checked.** Each file carries a SHA-256 of its contents; a file that fails it
  (damaged after it was written) is named in a `CorruptRunFileError` and never
  skipped.
- **Fingerprinted.** Each file holds the fingerprint of what defines its run:
  the protocol's name and fields (callables by qualified name, the optimizer
  by its config, the data by a digest of its arrays), the config and its
  settings (the overrides of its `Config`, and the epochs, batch size, data
  order and optimizer its runs train with), the seed, the study's epochs,
  batch size and data order, the engine, backend and the keras-bn-tools and
  Keras versions. `runs/study.json` holds the part shared by
  every run. A folder whose fingerprint differs from the study being resumed is
  refused with a `StudyMismatchError` naming every field that differs.
- **Exact.** Arrays are stored as their raw bytes (base64), floats as their
  shortest round-trip text: a loaded run equals the run that was saved, every
  number.

The layout is `DIR/runs/study.json` and `DIR/runs/<config>/seed-<seed>.json`
(the config name percent-encoded).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from keras_bn_tools._files import atomic_write_bytes
from keras_bn_tools.studies.fingerprint import differences, run_fingerprint
from keras_bn_tools.studies.results import RunResult

__all__ = [
    "FORMAT",
    "RUNS_DIR",
    "CorruptRunFileError",
    "RunStore",
    "StudyMismatchError",
]

#: The version of the run-file format.
FORMAT = 1
#: The folder of `out` that holds the finished runs.
RUNS_DIR = "runs"
_STUDY_FILE = "study.json"
_KIND = "keras-bn-tools run"
#: `RunResult` fields that are not saved: objects of the user's, made per process.
_NOT_SAVED = ("callbacks",)


class CorruptRunFileError(ValueError):
    """A run file that cannot be read back as written (damaged, or not a run file)."""


class StudyMismatchError(ValueError):
    """Saved runs whose fingerprint differs from the study being run."""


# --------------------------------------------------------------------------- encoding


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"__array__": base64.b64encode(array.tobytes()).decode("ascii"),
                "dtype": array.dtype.str, "shape": list(array.shape)}  # fmt: skip
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__array__" in value:
        raw = base64.b64decode(value["__array__"])
        return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if isinstance(value, dict) and "__dict__" in value:
        return {_decode(k): _decode(v) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _checksum(body: Mapping[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encode_run(run: RunResult, fingerprint: Mapping[str, Any]) -> bytes:
    """The bytes of a run file: the run (every field but callbacks), its fingerprint,
    and the SHA-256 of both."""
    fields = {f.name: _encode(getattr(run, f.name))
              for f in dataclasses.fields(run) if f.name not in _NOT_SAVED}  # fmt: skip
    body = {"format": FORMAT, "kind": _KIND, "fingerprint": dict(fingerprint), "run": fields}
    return (json.dumps({**body, "sha256": _checksum(body)}) + "\n").encode("utf-8")


def decode_run(data: bytes, path: str | os.PathLike = "<bytes>") -> tuple[RunResult, dict]:
    """`(run, fingerprint)` from a run file's bytes; `CorruptRunFileError` naming `path`
    when they are not a whole, unchanged run file."""

    def corrupt(why: str) -> CorruptRunFileError:
        return CorruptRunFileError(
            f"run file {os.fspath(path)!r} is corrupt ({why}); it is never skipped: delete "
            f"it to have its run done again (resume), or choose another `out`."
        )

    try:
        item = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise corrupt(f"not whole JSON: {error}") from None
    if not isinstance(item, dict) or item.get("kind") != _KIND:
        raise corrupt("not a keras-bn-tools run file")
    checksum = item.pop("sha256", None)
    if checksum != _checksum(item):
        raise corrupt("its SHA-256 does not match its contents")
    if item.get("format") != FORMAT:
        raise corrupt(f"format {item.get('format')!r}; this version reads {FORMAT}")
    try:
        fields = {k: _decode(v) for k, v in item["run"].items()}
        return RunResult(**fields), item["fingerprint"]
    except (KeyError, TypeError, ValueError) as error:
        raise corrupt(f"unreadable run: {error}") from None


# --------------------------------------------------------------------------- the folder


class RunStore:
    """The `runs/` folder of a study's `out`: saves, finds and loads finished runs.

    Args:
        out: the study's `out` directory (`runs/` is made inside it).
        study: the study's fingerprint (`study_fingerprint`).
        configs: config name -> its fingerprint (`config_fingerprint`).

    Workers make their own `RunStore(out, study)` to save runs; the process
    that runs the study calls `open` first, which checks the folder.
    """

    def __init__(self, out: str | os.PathLike, study: Mapping[str, Any],
                 configs: Mapping[str, Any] | None = None):  # fmt: skip
        self.out = Path(out)
        self.directory = self.out / RUNS_DIR
        self.study = dict(study)
        self.configs = dict(configs or {})

    def __reduce__(self):  # workers get the paths and the fingerprints, nothing else
        return (RunStore, (os.fspath(self.out), self.study, self.configs))

    def fingerprint(self, config: str, seed: int) -> dict[str, Any]:
        """The fingerprint of the run of `config` and `seed` in this study."""
        return run_fingerprint(self.study, self.configs[config], seed)

    # -------------------------------------------------------------- paths

    def path(self, config: str, seed: int) -> Path:
        """Where the run of `config` and `seed` is saved."""
        return self.directory / quote(config, safe="") / f"seed-{int(seed)}.json"

    def saved(self) -> list[Path]:
        """Every run file in the folder (finished runs of any config and seed)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*/seed-*.json"))

    @staticmethod
    def key(path: Path) -> tuple[str, int]:
        """`(config, seed)` of a run file's path."""
        return unquote(path.parent.name), int(path.stem.removeprefix("seed-"))

    # -------------------------------------------------------------- checks

    def open(self, *, resume: bool) -> RunStore:
        """Check the folder for this study and make it; return `self`.

        Without `resume`, a folder that already holds finished runs is refused
        (naming how many and how to use them). With `resume`, a folder of
        another study is refused, naming what differs. Temporary files of
        writes that a killed process left are removed.

        Raises:
            ValueError: finished runs and `resume=False`.
            StudyMismatchError: the folder's study differs from this one.
            CorruptRunFileError: an unreadable `study.json`.
        """
        saved = self.saved()
        if saved and not resume:
            raise ValueError(
                f"`out` {str(self.out)!r} already holds {len(saved)} finished run(s) of a "
                f"study in {str(self.directory)!r}. Pass resume=True (--resume on the "
                f"command line) to keep them and run only the missing ones, or choose "
                f"another `out` (or delete {str(self.directory)!r}) to start over."
            )
        study_file = self.directory / _STUDY_FILE
        if resume and study_file.exists():
            try:
                item = json.loads(study_file.read_text(encoding="utf-8"))
                checksum = item.pop("sha256")
                if checksum != _checksum(item):
                    raise ValueError("its SHA-256 does not match its contents")
                saved_study = item["study"]
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise CorruptRunFileError(
                    f"run file {str(study_file)!r} is corrupt ({error}); it is never "
                    f"skipped: delete {str(self.directory)!r} to start over."
                ) from None
            self._refuse_other_study(saved_study, study_file)
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("**/.*.tmp"):
            leftover.unlink(missing_ok=True)
        body = {"format": FORMAT, "study": self.study}
        atomic_write_bytes(
            study_file, (json.dumps({**body, "sha256": _checksum(body)}, indent=1) + "\n").encode()
        )
        return self

    def _refuse_other_study(self, saved: Any, where: Path) -> None:
        diff = differences(saved, self.study)
        if diff:
            raise StudyMismatchError(
                f"`out` {str(self.out)!r} holds runs of a different study ({str(where)!r}); "
                f"they are never mixed with this one. What differs: " + "; ".join(diff) + ". "
                "Run with the saved settings to resume it, or choose another `out`."
            )

    # -------------------------------------------------------------- runs

    def save(self, run: RunResult) -> Path:
        """Write `run` (crash-safe) with its fingerprint; return its path."""
        path = self.path(run.config, run.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, encode_run(run, self.fingerprint(run.config, run.seed)))
        return path

    def load(self, config: str, seed: int) -> RunResult | None:
        """The saved run of `config` and `seed`, or None if it is not saved.

        Raises:
            CorruptRunFileError: the file is damaged (named in the message).
            StudyMismatchError: its fingerprint is not this study's run's.
        """
        path = self.path(config, seed)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        run, fingerprint = decode_run(data, path)
        diff = differences(fingerprint, self.fingerprint(config, seed))
        if diff or (run.config, run.seed) != (config, seed):
            raise StudyMismatchError(
                f"run file {str(path)!r} is not this study's run of config {config!r}, seed "
                f"{seed}; it is never mixed in. What differs: "
                + "; ".join(diff or [f"run: saved {run.config!r}/{run.seed}"])
                + ". Run with the saved settings to resume it, or choose another `out`."
            )
        return run

    def load_many(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], RunResult]:
        """The saved runs among `keys` (each checked as `load` does)."""
        found = {}
        for config, seed in keys:
            run = self.load(config, seed)
            if run is not None:
                found[(config, seed)] = run
        return found
