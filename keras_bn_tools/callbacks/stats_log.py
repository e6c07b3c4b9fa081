"""`MovingStatsLog`: the records of a `MovingStatsTracker`, in memory and on disk.

On-disk format (`log_dir`)
--------------------------
Two files, written by one tracker run:

- `moving_stats.json`: a small header written once at the start of training:
  format name and version, `every`, the tracked layers and stats, and the
  record layout (`fields`: name, dtype, shape; for statistic fields also the
  layer key and stat name).
- `moving_stats.bin`: fixed-size little-endian binary records, one per
  snapshot, appended with a single unbuffered `write` to a file opened in
  append mode. A record is a NumPy structured row: `step` (int64), `epoch`
  (int64), then one field per (layer, stat) of that variable's dtype and
  shape. Every record has the same size, so recording the 1000th snapshot
  costs what the first did, and a crash (or a callback that raises) leaves
  every earlier record on disk. A torn last record is ignored when reading.

`MovingStatsTracker.load(log_dir)` reads both back with `numpy.frombuffer`
into the same `MovingStatsLog` the tracker keeps in memory.

A log is only ever appended to (`open_for_append`): a later training run, in
this process or another, continues it if it has the same layout, and one of
another layout is refused, so no record is ever overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from keras_bn_tools._files import atomic_write_text

__all__ = [
    "FORMAT",
    "HEADER_FILE",
    "INDEX_FIELDS",
    "RECORDS_FILE",
    "MovingStatsLog",
    "check_continues",
    "open_for_append",
    "read_header",
    "read_log_files",
]

HEADER_FILE = "moving_stats.json"
RECORDS_FILE = "moving_stats.bin"
FORMAT = "keras-bn-tools/moving-stats"
FORMAT_VERSION = 1
INDEX_FIELDS = (("step", "<i8"), ("epoch", "<i8"))


def _record_dtype(fields: Sequence[dict[str, Any]]) -> np.dtype:
    return np.dtype([(f["name"], f["dtype"], tuple(f.get("shape", ()))) for f in fields])


class MovingStatsLog:
    """Snapshots of BN statistics, stored as rows of one NumPy structured array.

    Appending a record is amortized O(1) (a capacity-doubling buffer); the
    arrays handed out by `history`, `steps` and `epochs` are read-only views
    of the first `len(self)` rows, built once per new record.

    Attributes:
        every: the tracker's `every` (`"epoch"` or an int).
        layers: tracked layer keys, in call order.
        stats: the requested stat names.
    """

    def __init__(
        self,
        fields: Sequence[dict[str, Any]],
        *,
        every: str | int,
        layers: Sequence[str],
        stats: Sequence[str],
        records: np.ndarray | None = None,
    ):
        self.fields = [dict(f) for f in fields]
        self.every = every
        self.layers = list(layers)
        self.stats = list(stats)
        self.dtype = _record_dtype(self.fields)
        if records is None:
            records = np.zeros(16, dtype=self.dtype)
            self._size = 0
        else:
            self._size = len(records)
        self._records = records
        self._views: dict[str, Any] | None = None

    # -- writing
    def new_row(self) -> np.ndarray:
        """A zeroed one-row array of this log's dtype, to fill and `append`."""
        return np.zeros(1, dtype=self.dtype)

    def append(self, row: np.ndarray) -> None:
        """Append a one-row structured array (see `new_row`)."""
        if self._size == len(self._records):
            grown = np.zeros(max(16, 2 * len(self._records)), dtype=self.dtype)
            grown[: self._size] = self._records[: self._size]
            self._records = grown
        self._records[self._size] = row[0]
        self._size += 1
        self._views = None

    # -- reading
    def __len__(self) -> int:
        return self._size

    def _view(self, name: str) -> np.ndarray:
        view = self._records[name][: self._size]
        view.flags.writeable = False
        return view

    def _build_views(self) -> dict[str, Any]:
        if self._views is None:
            history: dict[str, dict[str, np.ndarray]] = {key: {} for key in self.layers}
            for field in self.fields:
                if "layer" in field:
                    history[field["layer"]][field["stat"]] = self._view(field["name"])
            self._views = {
                "history": history,
                "steps": self._view("step"),
                "epochs": self._view("epoch"),
            }
        return self._views

    @property
    def history(self) -> dict[str, dict[str, np.ndarray]]:
        """`history[layer][stat]`: array of shape (records, features), oldest first.

        A stat the layer lacks (gamma with `scale=False`, beta with
        `center=False`) is absent from that layer's dict.
        """
        return self._build_views()["history"]

    @property
    def steps(self) -> np.ndarray:
        """int64 array: training steps (batches) completed in this run at each record."""
        return self._build_views()["steps"]

    @property
    def epochs(self) -> np.ndarray:
        """int64 array: epochs completed in this run at each record."""
        return self._build_views()["epochs"]

    def header(self) -> dict[str, Any]:
        """The JSON header describing this log's records."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "every": self.every,
            "layers": self.layers,
            "stats": self.stats,
            "record_bytes": self.dtype.itemsize,
            "fields": self.fields,
        }

    @classmethod
    def load(cls, log_dir: str | os.PathLike) -> MovingStatsLog:
        """Read a log written by `MovingStatsTracker(log_dir=...)`.

        Raises:
            FileNotFoundError: if the header or the records file is missing.
            ValueError: if the header is not a valid header of this format
                (naming the file and what is wrong), or disagrees with the
                records file.
        """
        _, header, records = read_log_files(
            log_dir, HEADER_FILE, RECORDS_FILE, "complete moving-statistics log"
        )
        return cls(
            header["fields"],
            every=header["every"],
            layers=header["layers"],
            stats=header["stats"],
            records=records,
        )

    def __repr__(self) -> str:
        return (
            f"<MovingStatsLog every={self.every!r} layers={self.layers} stats={self.stats} "
            f"records={len(self)}>"
        )


def _header_error(path: str, problem: str) -> ValueError:
    return ValueError(f"Corrupt moving-statistics header {path}: {problem}.")


def _check_field(path: str, index: int, field: Any) -> None:
    if not isinstance(field, dict) or not isinstance(field.get("name"), str):
        raise _header_error(path, f"`fields[{index}]` must be an object with a string 'name'")
    shape = field.get("shape", [])
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _header_error(path, f"`fields[{index}]` has an invalid 'shape' {shape!r}")
    try:
        np.dtype(field.get("dtype"))
    except TypeError as error:
        raise _header_error(
            path, f"`fields[{index}]` has an invalid 'dtype' {field.get('dtype')!r}"
        ) from error
    if "layer" in field and not isinstance(field.get("stat"), str):
        raise _header_error(path, f"`fields[{index}]` names a layer but no 'stat'")


def read_log_files(log_dir: str | os.PathLike, header_file: str, records_file: str,
                   what: str) -> tuple[str, dict[str, Any], np.ndarray]:  # fmt: skip
    """`(header path, header, records)` of a log in this record format (`read_header`'s
    checks; a torn last record is dropped).

    Raises:
        FileNotFoundError: naming the missing file and `log_dir` ("No `what` in ...").
    """
    header_path = os.path.join(log_dir, header_file)
    records_path = os.path.join(log_dir, records_file)
    for path in (header_path, records_path):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No {what} in `log_dir`={os.fspath(log_dir)!r}: "
                f"{os.path.basename(path)} is missing."
            )
    header = read_header(header_path)
    with open(records_path, "rb") as f:
        raw = f.read()
    dtype = header["dtype"]
    records = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize).copy()
    return header_path, header, records


def read_header(path: str) -> dict[str, Any]:
    """Read and check a log header; add its record `dtype`. Errors name `path` and the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            header = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _header_error(path, f"not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise _header_error(path, f"expected a JSON object, got a {type(header).__name__}")
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} version {FORMAT_VERSION} header "
            f"(format={header.get('format')!r}, version={header.get('version')!r})."
        )
    missing = [k for k in ("every", "layers", "stats", "record_bytes", "fields") if k not in header]
    if missing:
        raise _header_error(path, f"missing {missing}")
    fields, layers = header["fields"], header["layers"]
    if not isinstance(fields, list) or not isinstance(layers, list):
        raise _header_error(path, "'fields' and 'layers' must be lists")
    for index, field in enumerate(fields):
        _check_field(path, index, field)
    names = [field["name"] for field in fields]
    if names[:2] != [name for name, _ in INDEX_FIELDS] or len(set(names)) != len(names):
        raise _header_error(path, "'fields' must start with 'step' and 'epoch', names unique")
    unknown = sorted({f["layer"] for f in fields if "layer" in f} - set(map(str, layers)))
    if unknown:
        raise _header_error(path, f"fields name layers {unknown} that 'layers' does not list")
    try:
        dtype = _record_dtype(fields)
    except (TypeError, ValueError) as error:
        raise _header_error(path, f"'fields' do not make a record type ({error})") from error
    if header["record_bytes"] != dtype.itemsize:
        raise _header_error(
            path,
            f"'record_bytes' is {header['record_bytes']!r} but the fields make records of "
            f"{dtype.itemsize} bytes",
        )
    return {**header, "dtype": dtype}


def check_continues(earlier: MovingStatsLog, new: MovingStatsLog, where: str) -> None:
    """Refuse to append records of another layout (model, layers, stats, `every`)."""
    before, now = earlier.header(), new.header()
    differ = [key for key in ("layers", "stats", "every", "fields") if before[key] != now[key]]
    if differ:
        shown = "; ".join(f"{key} {before[key]!r} there, {now[key]!r} now" for key in differ[:2])
        raise ValueError(
            f"MovingStatsTracker: {where} holds records of another layout ({shown}). A tracker "
            "appends to its log and never overwrites it: use a new `log_dir` (or a new tracker) "
            "for another model, other layers, stats or `every`."
        )


def open_for_append(log_dir: str, new: MovingStatsLog) -> tuple[MovingStatsLog, BinaryIO]:
    """Open the log in `log_dir` for appending; return it and its records file.

    The log there, if any, is continued: it must have `new`'s layout
    (`check_continues`), and a torn last record is cut off so that the next
    record starts at a record boundary. Otherwise `new` is written (records
    file first, then the header, atomically). A records file without a header
    is not ours to overwrite: `ValueError`.
    """
    os.makedirs(log_dir, exist_ok=True)
    records_path = os.path.join(log_dir, RECORDS_FILE)
    header_path = os.path.join(log_dir, HEADER_FILE)
    if os.path.exists(header_path):
        if not os.path.exists(records_path):  # stopped between the two files
            open(records_path, "xb").close()
        log = MovingStatsLog.load(log_dir)
        check_continues(log, new, f"`log_dir`={log_dir!r}")
        with open(records_path, "r+b") as f:
            f.truncate(len(log) * log.dtype.itemsize)
    elif os.path.exists(records_path):
        raise ValueError(
            f"MovingStatsTracker: `log_dir`={log_dir!r} holds {RECORDS_FILE} without its "
            f"header {HEADER_FILE}; refusing to overwrite it. Use a new `log_dir`."
        )
    else:
        log = new
        open(records_path, "xb").close()
        atomic_write_text(header_path, json.dumps(log.header(), indent=1))
    return log, open(records_path, "ab", buffering=0)
