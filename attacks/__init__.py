"""Attacks, registered by name. Third-party attacks join through the `kansa.attacks` entry-point group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from audit.plugins import Registry

if TYPE_CHECKING:
    from attacks.base import Attack

ATTACKS: Registry[type["Attack"]] = Registry(
    "attack",
    (
        "attacks.evasion",
        "attacks.minimum_norm",
        "attacks.blackbox",
        "attacks.membership",
        "attacks.inversion",
        "attacks.attribute",
    ),
    "kansa.attacks",
)
register = ATTACKS.register
registry = ATTACKS.all
