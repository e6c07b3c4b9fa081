"""JAX's persistent compilation cache for a study's programs.

Compiling is most of a small JAX study: the circles study compiles one program
per config and runs it in a fraction of a second. The JAX engine lowers the
same program for every seed and every process (the seeds' weights and data
orders are arguments, never constants), so JAX's own persistent cache
(`jax_compilation_cache_dir`, public configuration) serves a second study, in
another process or on another worker, from disk. A miss costs the lookup and
the writing of the new entry, nothing more.

JAX looks an entry up by the lowered program, so it still traces the study's
Python (Keras's layers, the optimizer, the training loop) in every process:
for the circles study, more time than loading the compiled programs. So the
JAX engine also saves each config's traced program, exported with
`jax.export`, beside JAX's entries (`PROGRAMS`), under a key naming everything
the program is made of (`program_key`), and a later process calls the saved
program instead of tracing. Only programs made of code that some configuration
names are saved: Keras's and this package's layers, losses and optimizers,
whose code the key pins with their versions (and this package's sources); a
model with a layer, loss or function of the user's own is traced every time,
because its code could change under the same name.

The command line uses `default_location()` unless told otherwise
(`--compile-cache DIR`, or `--compile-cache off`); the environment variable
`KERAS_BN_TOOLS_COMPILE_CACHE` sets that default (`off`, `0` or `none` turn
it off). In Python, `use_compile_cache(path)` turns it on for the process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keras_bn_tools._files import atomic_write_bytes

__all__ = ["ENV", "MIN_COMPILE_SECONDS", "PROGRAMS", "active_compile_cache", "default_location",
           "load_program", "program_key", "save_program", "use_compile_cache"]  # fmt: skip

#: The environment variable that sets (or, with `off`, turns off) the default location.
ENV = "KERAS_BN_TOOLS_COMPILE_CACHE"
_OFF = ("", "0", "off", "none", "false", "no")
#: Programs that compile faster than this are not cached. None: a Keras model's small
#: eager programs (its initializers' ops) take 10-40 ms each to compile and a few KB
#: each on disk; the circles study compiles about twenty of them in every process.
MIN_COMPILE_SECONDS = 0.0
#: The subfolder of the cache that holds the study programs exported with `jax.export`.
PROGRAMS = "keras-bn-tools-programs"
#: Where a configuration names code by its module: only these modules' code is pinned
#: by the versions in `program_key`.
_KNOWN_MODULES = ("keras", "keras_bn_tools")


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


def program_key(model: Any, optimizer: Any, loss: Any, **settings: Any) -> str | None:
    """The key of the study program that trains `model` with `optimizer` and `loss`
    under `settings` (JSON-able: epochs, batch size, argument shapes...), or None when
    the program must not be reused: part of it is code of the user's own (a layer,
    model, loss, activation or initializer from another module, a lambda), whose
    code could change under the same name, or something without a configuration.

    The key pins the configurations of the model (every layer, initializer and
    regularizer), optimizer and loss, the settings, Keras's and JAX's versions and
    global settings, and this package's version and sources. Layer names are part of
    a configuration: names Keras makes up (`dense_3`) are the same in processes that
    build the same models in the same order (the command line's); elsewhere they
    make a miss, never a wrong hit.
    """
    import jax
    import keras

    serialize = keras.saving.serialize_keras_object
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parts = {
                "model": serialize(model),
                "optimizer": serialize(optimizer),
                "loss": loss if isinstance(loss, str) else serialize(loss),
            }
        except Exception:  # no configuration: nothing names this program
            return None
    # Keras warns where a configuration carries a lambda's bytecode instead of a name.
    if any("lambda" in str(warning.message) for warning in caught):
        return None
    if not all(_only_known_code(part) for part in parts.values()):
        return None
    from keras_bn_tools import __version__

    parts.update(
        settings=settings, keras=keras.__version__, jax=jax.__version__,
        jaxlib=jax.lib.__version__, platform=jax.default_backend(),
        x64=bool(jax.config.jax_enable_x64), floatx=keras.config.floatx(),
        package=__version__, sources=_package_digest(),
    )  # fmt: skip
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _only_known_code(config: Any) -> bool:
    """Whether every object a serialized configuration names comes from Keras or this
    package (a function of the user's own is named with the module `builtins`), and
    none is a lambda layer (whose code the configuration carries, unpinned)."""
    if isinstance(config, Mapping):
        module = config.get("module")
        if isinstance(module, str) and module.split(".")[0] not in _KNOWN_MODULES:
            return False
        if config.get("class_name") == "__lambda__" or _is_function_dump(config.get("value")):
            return False
        return all(_only_known_code(value) for value in config.values())
    if isinstance(config, list | tuple):
        return all(_only_known_code(value) for value in config)
    return True


def _is_function_dump(value: Any) -> bool:
    """A lambda as Keras writes it into a configuration: (bytecode, defaults, closure)."""
    return isinstance(value, list | tuple) and len(value) == 3 and isinstance(value[0], str)


@functools.cache
def _package_digest() -> str:
    """SHA-256 of this package's Python sources: a changed engine or layer is a new program,
    also where the version number has not moved (a development install)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _program_path(key: str) -> Path | None:
    folder = active_compile_cache()
    return None if folder is None else Path(folder) / PROGRAMS / f"{key}.bin"


def load_program(key: str) -> bytes | None:
    """The program saved under `key` in the active cache, or None (no cache, no such
    program, or a damaged file: it is traced again and the file rewritten)."""
    path = _program_path(key)
    if path is None or not path.is_file():
        return None
    raw = path.read_bytes()
    checksum, blob = raw[:32], raw[32:]
    if hashlib.sha256(blob).digest() != checksum:
        warnings.warn(
            f"The saved study program {path} is damaged (a torn write or a changed file); "
            f"it is traced again and rewritten.",
            stacklevel=2,
        )
        return None
    return blob


def save_program(key: str, blob: bytes) -> None:
    """Save a program under `key` in the active cache (nothing without one): whole or
    not at all (`atomic_write_bytes`), with its checksum."""
    path = _program_path(key)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, hashlib.sha256(blob).digest() + blob)
