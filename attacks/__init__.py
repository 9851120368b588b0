"""Attacks, registered by name. Third-party attacks join through the `kansa.attacks` entry-point group."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeVar

from audit.errors import KansaError

if TYPE_CHECKING:
    from attacks.base import Attack

_BUILTIN_MODULES = (
    "attacks.evasion",
    "attacks.minimum_norm",
    "attacks.blackbox",
    "attacks.membership",
    "attacks.inversion",
    "attacks.attribute",
)
_REGISTRY: dict[str, type["Attack"]] = {}
_loaded = False

A = TypeVar("A", bound=type["Attack"])


def register(cls: A) -> A:
    """Class decorator: make an attack available by its `name` in configs and `kansa list`."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise KansaError(f"two attacks are registered as {cls.name!r}: {existing.__module__} and {cls.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type["Attack"]]:
    """All attacks by name: the built-in ones, then those of installed plugins."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            import_module(module)
        for entry in entry_points(group="kansa.attacks"):
            try:
                register(entry.load())
            except Exception as exc:
                raise KansaError(f"attack plugin {entry.name!r} ({entry.value}) failed to load: {exc}") from None
    return dict(sorted(_REGISTRY.items()))
