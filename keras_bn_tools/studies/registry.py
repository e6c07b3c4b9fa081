"""The built-in protocols, listed once.

`BUILTIN` maps each built-in protocol's name to the module that defines it
as `PROTOCOL`. Everything that knows the built-in protocols reads it:
`PROTOCOLS` (below), the lazy submodules of `keras_bn_tools.studies` and the
command line's subcommands. A new built-in protocol is one module plus one
line here. Nothing here imports Keras: `--help` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from keras_bn_tools.studies.protocol import Protocol

__all__ = ["BUILTIN", "PROTOCOLS", "resolve_protocol"]

#: Built-in protocol name -> the module (in `keras_bn_tools.studies`) defining `PROTOCOL`.
BUILTIN: dict[str, str] = {
    "circles": "circles",
    "digits": "digits",
    "sequence": "sequence",
    "diabetes": "diabetes",
    "sigmoid-mlp": "sigmoid_mlp",
    "small-batch": "small_batch",
}


class _BuiltinProtocols(Mapping):
    """`BUILTIN`'s names -> their `Protocol`, each module imported on first use."""

    def __getitem__(self, name: str) -> Protocol:
        if name not in BUILTIN:
            raise KeyError(name)
        return importlib.import_module(f"keras_bn_tools.studies.{BUILTIN[name]}").PROTOCOL

    def __iter__(self) -> Iterator[str]:
        return iter(BUILTIN)

    def __len__(self) -> int:
        return len(BUILTIN)

    def __repr__(self) -> str:
        return f"PROTOCOLS({', '.join(BUILTIN)})"


#: The built-in protocols by name (each module is imported when first looked up).
PROTOCOLS: Mapping[str, Protocol] = _BuiltinProtocols()


def resolve_protocol(protocol: str | Protocol) -> Protocol:
    """A `Protocol`, or the built-in one named `protocol`."""
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, str) and protocol in BUILTIN:
        return PROTOCOLS[protocol]
    raise ValueError(
        f"`protocol` must be a Protocol or one of {', '.join(map(repr, BUILTIN))}, "
        f"got {protocol!r}."
    )
