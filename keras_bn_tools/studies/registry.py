"""The built-in protocols, listed once: in the package metadata.

`pyproject.toml` lists each built-in protocol as an entry point of the group
`keras_bn_tools.protocols` (`name = "module:PROTOCOL"`). `BUILTIN` reads that
group; everything that knows the built-in protocols reads `BUILTIN` (`PROTOCOLS`
below, the lazy submodules of `keras_bn_tools.studies`), and the command line's
front (`keras_bn_tools_cli`) reads the same group without importing the package,
so `--help` lists them without loading Keras. A new built-in protocol is one
module plus one line in `pyproject.toml` (then reinstall: the metadata is built
at install time).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points

from keras_bn_tools.studies.protocol import Protocol

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "PROTOCOLS", "resolve_protocol"]

#: The entry-point group that lists the built-in protocols (`pyproject.toml`).
ENTRY_POINT_GROUP = "keras_bn_tools.protocols"

#: Built-in protocol name -> "module:attribute" of its `Protocol`, from the metadata.
BUILTIN: dict[str, str] = {
    entry.name: entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)
}


class _BuiltinProtocols(Mapping):
    """`BUILTIN`'s names -> their `Protocol`, each module imported on first use."""

    def __getitem__(self, name: str) -> Protocol:
        if name not in BUILTIN:
            raise KeyError(name)
        module, _, attribute = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attribute)

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
