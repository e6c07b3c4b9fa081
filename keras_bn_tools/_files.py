"""Files written whole or not at all: what the studies and the compile cache save."""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text"]

_WRITE_TRIES = 3


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows: no directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either its old self or all of `data`.

    The bytes go to a temporary file beside `path`, which is `fsync`ed and read
    back: a torn or short write (a full disk, a flaky network file system) is
    detected and written again, up to three times, then raised as `OSError`.
    Only a verified file is renamed over `path` (`os.replace`, atomic on POSIX
    and Windows), and the folder is `fsync`ed so that the rename survives a
    power cut.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        for _ in range(_WRITE_TRIES):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if tmp.read_bytes() == data:
                break
        else:
            raise OSError(f"could not write {str(path)!r}: {_WRITE_TRIES} torn writes in a row")
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
