"""Defenses, registered by name. Third-party defenses join through the `kansa.defenses` entry-point group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from audit.plugins import Registry

if TYPE_CHECKING:
    from defenses.base import Defense

DEFENSES: Registry[type["Defense"]] = Registry(
    "defense",
    ("defenses.training", "defenses.compression", "defenses.preprocessing", "defenses.postprocessing"),
    "kansa.defenses",
)
register = DEFENSES.register
registry = DEFENSES.all
