"""JAX's persistent compilation cache for a study's programs.

Compiling is most of a small JAX study: the circles study compiles one program
per config and runs it in a fraction of a second. The JAX engine lowers the
same program for every seed and every process (the seeds' weights and data
orders are arguments, never constants), so JAX's own persistent cache
(`jax_compilation_cache_dir`, public configuration) serves a second study, in
another process or on another worker, from disk. A miss costs the lookup and
the writing of the new entry, nothing more.

The command line uses `default_location()` unless told otherwise
(`--compile-cache DIR`, or `--compile-cache off`); the environment variable
`KERAS_BN_TOOLS_COMPILE_CACHE` sets that default (`off`, `0` or `none` turn
it off). In Python, `use_compile_cache(path)` turns it on for the process.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV", "MIN_COMPILE_SECONDS", "active_compile_cache", "default_location",
           "use_compile_cache"]  # fmt: skip

#: The environment variable that sets (or, with `off`, turns off) the default location.
ENV = "KERAS_BN_TOOLS_COMPILE_CACHE"
_OFF = ("", "0", "off", "none", "false", "no")
#: Programs that compile faster than this are not cached: a Keras model's small eager
#: programs (initializers) would fill the folder for nothing; a study's take longer.
MIN_COMPILE_SECONDS = 0.1


def is_off(value: str) -> bool:
    """Whether a `--compile-cache` or `KERAS_BN_TOOLS_COMPILE_CACHE` value means "no cache"."""
    return value.strip().lower() in _OFF


def default_location() -> Path | None:
    """`$KERAS_BN_TOOLS_COMPILE_CACHE` if set (None when it says `off`), else
    `$XDG_CACHE_HOME/keras-bn-tools/jax-compile-cache` (`~/.cache/...` by default)."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if is_off(value) else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "keras-bn-tools" / "jax-compile-cache"


def use_compile_cache(directory: str | os.PathLike) -> str:
    """Turn JAX's persistent compilation cache on for this process, in `directory`
    (made if missing), for programs that take `MIN_COMPILE_SECONDS` or more to
    compile. Returns the folder as a string. Needs JAX (not the JAX backend)."""
    import jax

    directory = os.fspath(Path(directory).expanduser().absolute())
    os.makedirs(directory, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def active_compile_cache() -> str | None:
    """The folder of JAX's persistent compilation cache in this process, or None
    (also when JAX is not imported: then nothing has set one)."""
    import sys

    if "jax" not in sys.modules:
        return None
    return sys.modules["jax"].config.jax_compilation_cache_dir or None
