"""Families of named, pluggable pieces (attacks, defenses), as pytest does with its plugins.

Built-in members register on import; third-party ones join through an entry-point group, so a
team adds its own attack or defense without forking Kansa.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from audit.errors import KansaError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin_modules: tuple[str, ...], entry_point_group: str) -> None:
        self.kind = kind
        self.builtin_modules = builtin_modules
        self.entry_point_group = entry_point_group
        self._members: dict[str, T] = {}
        self._loaded = False

    def register(self, cls: T) -> T:
        """Class decorator: make a member available by its `name` in configs and `kansa list`."""
        name: str = getattr(cls, "name")
        existing = self._members.get(name)
        if existing is not None and existing is not cls:
            raise KansaError(f"two {self.kind}s are registered as {name!r}: {existing.__module__} and {cls.__module__}")
        self._members[name] = cls
        return cls

    def all(self) -> dict[str, T]:
        """Every member by name: the built-in ones, then those of installed plugins."""
        if not self._loaded:
            self._loaded = True
            for module in self.builtin_modules:
                import_module(module)
            for entry in entry_points(group=self.entry_point_group):
                try:
                    self.register(entry.load())
                except Exception as exc:
                    raise KansaError(f"{self.kind} plugin {entry.name!r} ({entry.value}) failed to load: {exc}") from None
        return dict(sorted(self._members.items()))

    def __getitem__(self, name: str) -> Any:
        return self.all()[name]
