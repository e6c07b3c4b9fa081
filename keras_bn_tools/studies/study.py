"""`run_study`: train each config of a protocol once per seed, on the chosen engine."""

from __future__ import annotations

import importlib
import platform
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from keras_bn_tools._validation import check_choice, check_positive_int, check_seeds
from keras_bn_tools.studies.engines import resolve_engine
from keras_bn_tools.studies.protocol import SHUFFLES, Protocol
from keras_bn_tools.studies.results import RunResult, StudyResult

__all__ = ["PROTOCOLS", "resolve_protocol", "run_study"]


class _BuiltinProtocols(Mapping):
    """Built-in protocol name -> its `Protocol`, each module imported on use."""

    names = ("circles", "digits", "sequence", "sigmoid-mlp", "small-batch")

    def __getitem__(self, name: str) -> Protocol:
        if name not in self.names:
            raise KeyError(name)
        return importlib.import_module(f"keras_bn_tools.studies.{name.replace('-', '_')}").PROTOCOL

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"PROTOCOLS({', '.join(self.names)})"


#: The built-in protocols by name (each module is imported when first looked up).
PROTOCOLS: Mapping[str, Protocol] = _BuiltinProtocols()


def resolve_protocol(protocol: str | Protocol) -> Protocol:
    """A `Protocol`, or the built-in one named `protocol`."""
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, str) and protocol in PROTOCOLS:
        return PROTOCOLS[protocol]
    raise ValueError(
        f"`protocol` must be a Protocol or one of {', '.join(map(repr, PROTOCOLS))}, "
        f"got {protocol!r}."
    )


def _resolve_configs(protocol: Protocol, configs: Any) -> tuple[str, ...]:
    if configs is None:
        return tuple(protocol.default_configs)
    if isinstance(configs, str):
        configs = [configs]
    if not isinstance(configs, Sequence | set | frozenset | Mapping) or not configs:
        raise ValueError(
            f"`configs` must name at least one of {list(protocol.configs)}, got {configs!r}."
        )
    names = list(configs)
    unknown = [c for c in names if c not in protocol.configs]
    if unknown:
        raise ValueError(
            f"`configs`: unknown {protocol.name} config(s) {unknown}; valid: "
            f"{', '.join(protocol.configs)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"`configs` names a config more than once: {names}.")
    return tuple(names)


def _versions(backend: str) -> dict[str, str]:
    import keras

    from keras_bn_tools import __version__

    versions = {"python": platform.python_version(), "keras": keras.__version__}
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        versions[module] = importlib.import_module(module).__version__
    versions.update(keras_bn_tools=__version__, backend=backend)
    return versions


def run_study(
    protocol: str | Protocol = "circles",
    configs: Sequence[str] | str | None = None,
    seeds: Sequence[int] | range = range(10),
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    engine: str = "auto",
    shuffle: str = "epoch",
    callbacks_factory: Callable[[str, int], Sequence[Any]] | None = None,
    progress: bool = False,
    jit_compile: bool | str = "auto",
) -> StudyResult:
    """Train each config of `protocol` once per seed and collect the results.

    Args:
        protocol: a `Protocol` or a built-in name (`"circles"`, `"digits"`, `"sequence"`).
        configs: config names (default: the protocol's `default_configs`).
        seeds: distinct integers in `[0, 2**32 - 1]`; a `range` is streamed.
            Each run calls `keras.utils.set_random_seed(seed)` before building
            its model and draws its data order from the seed.
        epochs: epochs per run (default: the protocol's).
        batch_size: training batch size (default: the protocol's).
        engine: `"auto"` (the compiled engine where the backend has one:
            TensorFlow and JAX; else `"fit"`), `"compiled"` or `"fit"`.
            `StudyResult.engine` says which ran.
        shuffle: `"epoch"` (a fresh order every epoch), `"once"` or `"none"`
            (see `keras_bn_tools.studies.protocol`).
        callbacks_factory: `callbacks_factory(config, seed)` returns callbacks
            for that run's `model.fit` (kept in `RunResult.callbacks`); needs
            the `fit` engine.
        progress: show a progress bar over the runs on stderr.
        jit_compile: TensorFlow's compiled engine: compile with XLA (`True`,
            `False` or `"auto"`: as `protocol.jit_compile` says, which by
            default means from 4 seeds on, where it pays off).

    Returns:
        A `StudyResult`.

    Raises:
        ValueError: an unknown protocol, config, engine or shuffle; bad seeds;
            `engine="compiled"` on a backend without one (PyTorch);
            `callbacks_factory` with the compiled engine.
        TypeError: a non-integer seed, epochs or batch size.

    Example:
        ```python
        from keras_bn_tools.studies import run_study

        result = run_study("circles", ["baseline", "bn-after"], seeds=range(2), epochs=3)
        print(result.engine, result.table())
        ```
    """
    # Keras (and with it TensorFlow) loads only now: `PROTOCOLS` and --help stay light.
    from keras_bn_tools.studies.engines.common import RunSettings, StudyData, Timer, fresh_model

    protocol = resolve_protocol(protocol)
    configs = _resolve_configs(protocol, configs)
    seeds = check_seeds("seeds", seeds)
    epochs = protocol.epochs if epochs is None else check_positive_int("epochs", epochs)
    batch_size = protocol.batch_size if batch_size is None else batch_size
    settings = RunSettings(
        epochs,
        check_positive_int("batch_size", batch_size),
        check_choice("shuffle", shuffle, SHUFFLES),
    )
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"`jit_compile` must be True, False or 'auto', got {jit_compile!r}.")
    if callbacks_factory is not None and not callable(callbacks_factory):
        raise TypeError(f"`callbacks_factory` must be callable, got {callbacks_factory!r}.")
    import keras

    backend = keras.backend.backend()
    module = resolve_engine(engine, backend)
    options: dict[str, Any] = {}
    if module.NAME == "fit":
        options["callbacks_factory"] = callbacks_factory
    elif callbacks_factory is not None:
        raise ValueError(
            "`callbacks_factory` needs engine='fit': the compiled engine calls no Keras "
            "callbacks (its BN statistics per epoch are in RunResult.moving_stats)."
        )
    if module.__name__.endswith(".tensorflow"):
        if jit_compile == "auto":
            jit_compile = protocol.jit_compile
        options["jit_compile"] = len(seeds) >= 4 if jit_compile == "auto" else jit_compile
    data = StudyData.load(protocol, fresh_model(protocol, configs[0], seeds[0]))
    runs: list[RunResult] = []
    timer = Timer()
    from tqdm.auto import tqdm

    with tqdm(total=len(configs) * len(seeds), desc=protocol.name, unit="run", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:  # fmt: skip
        for config in configs:
            bar.set_postfix_str(config)
            for run in module.run_seeds(
                protocol, config, seeds, data=data, settings=settings, **options
            ):
                runs.append(run)
                bar.update(1)
    metadata = {
        "versions": _versions(backend),
        "description": protocol.description,
        "config_descriptions": {c: protocol.configs[c] for c in configs},
        "loss": str(protocol.loss),
        "accuracy": data.accuracy,
        "compile_seconds": sum(r.compile_seconds for r in runs),
        **({"jit_compile": options["jit_compile"]} if "jit_compile" in options else {}),
    }
    return StudyResult(
        protocol=protocol.name,
        runs=runs,
        configs=configs,
        seeds=seeds,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        engine=module.NAME,
        shuffle=settings.shuffle,
        target=protocol.target,
        seconds=timer.seconds,
        metadata=metadata,
    )
