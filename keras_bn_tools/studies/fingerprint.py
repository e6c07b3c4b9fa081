"""What defines a study and each of its runs, as plain JSON: the fingerprints that
`keras_bn_tools.studies.store` saves with every run and compares on resume.

A fingerprint identifies a value the same way in every process: callables by
`module:qualname` (an optimizer factory by the optimizer it makes), Keras objects
by class and `get_config()` less their process-numbered `name`, arrays by a
SHA-256 of their bytes, dataclasses field by field (`describe`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from keras_bn_tools.studies.protocol import Protocol

__all__ = ["config_fingerprint", "describe", "differences", "run_fingerprint",
           "study_fingerprint"]  # fmt: skip

#: Protocol fields that are not part of the study's fingerprint: prose, and the
#: configs, each of which is part of its own runs' fingerprint instead.
_NOT_FINGERPRINTED = ("description", "configs", "default_configs")


def describe(value: Any) -> Any:
    """`value` as plain JSON types that identify it the same way in every process.

    Callables by `module:qualname` (a factory named `optimizer` by what it
    makes), Keras objects by class and `get_config()` (less their `name`,
    which Keras numbers per process), dataclasses field by field.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return describe(value.item())
    if isinstance(value, np.ndarray):
        return {"array": _digest_arrays([value])}
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [describe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"type": _qualname(type(value))}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "optimizer" and callable(item):
                item = item()  # a factory: what it makes defines the runs
            out[f.name] = describe(item)
        return out
    if hasattr(value, "get_config") and not isinstance(value, type):
        config = {k: v for k, v in value.get_config().items() if k != "name"}
        return {"type": _qualname(type(value)), "config": describe(config)}
    if callable(value):
        return _qualname(value)
    return repr(value)


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _digest_arrays(arrays: Iterable[np.ndarray]) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def study_fingerprint(
    protocol: Protocol,
    *,
    data: Iterable[np.ndarray],
    epochs: int,
    batch_size: int,
    shuffle: str,
    engine: str,
    backend: str,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What every run of a study shares: protocol, data, settings, engine, versions.

    Args:
        protocol: the study's protocol (its fields other than prose and configs).
        data: the training and test arrays the runs see (digested).
        epochs: epochs per run.
        batch_size: the training batch size.
        shuffle: the data order (`"epoch"`, `"once"` or `"none"`).
        engine: the engine that runs (`"compiled"` or `"fit"`).
        backend: the Keras backend.
        options: engine options that change numbers (e.g. `jit_compile`).
    """
    import keras

    from keras_bn_tools import __version__

    fields = {
        f.name: describe(getattr(protocol, f.name))
        for f in dataclasses.fields(protocol)
        if f.name not in _NOT_FINGERPRINTED
    }
    fields["optimizer"] = describe(protocol.optimizer())
    return {
        "protocol": fields,
        "data": _digest_arrays(data),
        "epochs": epochs,
        "batch_size": batch_size,
        "shuffle": shuffle,
        "engine": engine,
        "backend": backend,
        "options": describe(dict(options or {})),
        "versions": {"keras_bn_tools": __version__, "keras": keras.__version__},
    }


def config_fingerprint(protocol: Protocol, config: str, settings: Any) -> dict[str, Any]:
    """What defines a config's runs: its name, its entry in `protocol.configs` (a
    description, or a `Config` with its overrides), and the settings its runs train
    with (`settings`, a `RunSettings`: epochs, batch size, data order, optimizer)."""
    effective = {f.name: describe(getattr(settings, f.name))
                 for f in dataclasses.fields(settings) if f.name != "optimizer"}  # fmt: skip
    effective["optimizer"] = describe(settings.make_optimizer(protocol))
    return {"name": config, "settings": describe(protocol.configs[config]),
            "effective": effective}  # fmt: skip


def run_fingerprint(study: Mapping[str, Any], config: Mapping[str, Any],
                    seed: int) -> dict[str, Any]:  # fmt: skip
    """The fingerprint of one run: the study's, its config's (`config_fingerprint`), its seed."""
    return {"study": dict(study), "config": dict(config), "seed": int(seed)}


def differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """`"field: saved X, now Y"` for every leaf that differs between two fingerprints."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        out = []
        for key in list(saved) + [k for k in now if k not in saved]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in now:
                out.append(f"{name}: saved {saved[key]!r}, now absent")
            elif key not in saved:
                out.append(f"{name}: saved absent, now {now[key]!r}")
            else:
                out.extend(differences(saved[key], now[key], name))
        return out
    return [] if saved == now else [f"{prefix or 'fingerprint'}: saved {saved!r}, now {now!r}"]
