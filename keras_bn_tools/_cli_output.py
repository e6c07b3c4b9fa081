"""The command line's results directory: checked before any work, written through a
staging directory, published whole, left as it was when stopped.

`check_out` refuses an `--out` that cannot be written or would mix two studies;
`make_staging` creates a hidden directory next to it; `publish` moves the
finished staging directory into place (replacing an earlier study whole) with
SIGINT, SIGTERM and SIGHUP held; `stop_on_signals` turns SIGTERM and SIGHUP
into `Stopped`, so that `finally` blocks remove the staging directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "Stopped",
    "UsageError",
    "check_out",
    "make_staging",
    "publish",
    "remove_staging",
    "signals_held",
    "stop_on_signals",
]


class UsageError(Exception):
    """Bad input found after parsing (reported like argparse's errors, exit status 2)."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived (SIGINT raises KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def check_out(out: Path, overwrite: bool, resume: bool = False) -> Path:
    """Refuse an `--out` that cannot be written or would mix two studies; return the
    existing directory where the staging directory goes (next to `--out`)."""
    try:
        return usable_out(out, overwrite, resume)
    except (OSError, ValueError) as error:  # a NUL byte, a name too long, no permission
        raise UsageError(f"--out {str(out)!r}: {error}") from None


def _finished_runs(out: Path) -> int:
    """The finished runs an interrupted (or finished) study keeps in `out/runs/`."""
    return len(list((out / "runs").glob("*/seed-*.json"))) if (out / "runs").is_dir() else 0


def usable_out(out: Path, overwrite: bool, resume: bool = False) -> Path:
    if str(out) in ("", "."):
        raise UsageError("--out: give a directory name (not '' or the current directory)")
    if "\0" in str(out):
        raise ValueError("a path cannot hold a NUL character")
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        runs = (out / "runs").is_dir()
        if not (out / "results.json").exists() and not runs:
            raise UsageError(
                f"--out {str(out)!r} is a directory that holds other files and no "
                f"results.json; choose a new or empty directory"
            )
        if not (out / "results.json").exists() and not (overwrite or resume):
            raise UsageError(
                f"--out {str(out)!r} keeps {_finished_runs(out)} finished runs of an "
                f"interrupted study in {str(out / 'runs')!r}; pass --resume (with the same "
                f"options) to run only the missing ones, or --overwrite to start over"
            )
        if not (overwrite or resume):
            kept = f", --resume to reuse its {_finished_runs(out)} finished runs" if runs else ""
            raise UsageError(
                f"--out {str(out)!r} holds an earlier study; pass --overwrite to replace it "
                f"as a whole{kept}, or choose another directory"
            )
    anchor = out.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise UsageError(f"--out {str(out)!r}: {str(anchor)!r} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r}: {str(anchor)!r} is not writable")
    return anchor


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Stopped` (as SIGINT raises KeyboardInterrupt), so that
    `finally` blocks run and remove the staging directory."""

    def handler(signum, frame):
        raise Stopped(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            previous[name] = signal.signal(getattr(signal, name), handler)
    try:
        yield
    finally:
        for name, old in previous.items():
            signal.signal(getattr(signal, name), old)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP (delivered on exit) while files are renamed."""
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    signals = {getattr(signal, n) for n in names if hasattr(signal, n)}
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def make_staging(anchor: Path, name: str) -> Path:
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".keras-bn-tools-{name}-", dir=anchor))
    except OSError as error:
        raise UsageError(f"--out: cannot write in {str(anchor)!r}: {error.strerror}") from None
    umask = os.umask(0)  # mkdtemp makes it private; it becomes --out, so use the umask
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def publish(staging: Path, out: Path) -> None:
    """Move the finished staging directory to `out`, replacing an earlier study whole;
    the study's finished runs (`out/runs/`, saved as they ended) come along, hard-linked
    (copied where links are refused) into the staging directory first, so that every
    moment `out` has them all."""
    out = out.expanduser().absolute()
    if (out / "runs").is_dir():

        def link(source: str, target: str) -> None:
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)

        shutil.copytree(out / "runs", staging / "runs", copy_function=link)
    with signals_held():
        out.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=".keras-bn-tools-old-", dir=out.parent))
            os.rename(out, old / "results")
        os.rename(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def remove_staging(staging: Path) -> None:
    """Remove the staging directory (signals held: a second Ctrl-C cannot cut it short)."""
    with signals_held():
        shutil.rmtree(staging, ignore_errors=True)
