"""Families of named, pluggable pieces (attacks, defenses), as pytest does with its plugins.

Built-in members register on import; third-party ones join through an entry-point group, so a
team adds its own attack or defense without forking Kansa.
"""

from __future__ import annotations

from contextlib import contextmanager
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Iterator, TypeVar

from audit.errors import KansaError
from audit.params import Location, Param, ParamSet

if TYPE_CHECKING:
    from audit.data import Dataset, Splits

T = TypeVar("T", bound=type)

DATA_KINDS = ("image", "tabular")


class Component:
    """What attacks and defenses share: a name, declared parameters, and the data they apply to.

    Whether a component applies is declared (`data_kinds`, `check_data`) rather than discovered when
    it fails halfway through a run: `kansa validate` and the start of `kansa run` ask every configured
    component, so a piece that cannot work on the data is a config error naming its key.
    """

    family: ClassVar[str] = "component"
    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    randomized: ClassVar[bool] = False
    data_kinds: ClassVar[tuple[str, ...]] = DATA_KINDS
    data_note: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        where = Location(f"{self.family} {self.name}")
        self.values = ParamSet(self.params).validate(values, where)
        self.check(self.values, where)

    @classmethod
    def check(cls, values: dict[str, Any], where: Location) -> None:
        """Reject parameter combinations that no single declaration can express (raise `where.error`)."""

    @classmethod
    def check_data(cls, values: dict[str, Any], dataset: "Dataset", splits: "Splits", where: Location) -> None:
        """Refuse data this component cannot work on, with the reason; subclasses may add conditions on their values."""
        if dataset.kind not in cls.data_kinds:
            raise where.error(f"{cls.family} {cls.name} does not apply to {dataset.kind} data ({dataset.name}): it needs "
                              f"{' or '.join(cls.data_kinds)} inputs" + (f"; {cls.data_note}" if cls.data_note else ""))


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

    @contextmanager
    def temporarily(self, cls: T) -> Iterator[T]:
        """Make `cls` a member inside a with-block only (for tests), restoring whatever held its name before."""
        self.all()
        name: str = getattr(cls, "name")
        previous = self._members.get(name)
        self._members[name] = cls
        try:
            yield cls
        finally:
            if previous is None:
                del self._members[name]
            else:
                self._members[name] = previous
