"""Attacks, registered by name. Third-party attacks join through the `kansa.attacks` entry-point group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from audit.plugins import Registry

if TYPE_CHECKING:
    from attacks.base import Attack

ATTACKS: Registry[type["Attack"]] = Registry(
    "attack",
    (
        "attacks.evasion",
        "attacks.apgd",
        "attacks.autoattack",
        "attacks.minimum_norm",
        "attacks.blackbox",
        "attacks.membership",
        "attacks.inversion",
        "attacks.attribute",
        "attacks.dp_audit",
    ),
    "kansa.attacks",
)
register = ATTACKS.register
registry = ATTACKS.all


def configured(attacks: list[dict[str, Any]]) -> dict[str, "Attack"]:
    """The configured attacks (validated `[[attacks]]` tables) as instances, by id; names no registry knows are left out."""
    known = registry()
    return {entry["id"]: known[entry["name"]](**entry["params"]) for entry in attacks if entry["name"] in known}


def swept_eps(attacks: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per norm ("inf", "2"), every eps the configured attacks sweep, sorted."""
    swept: dict[str, set[float]] = {}
    for attack in configured(attacks).values():
        if attack.norm is not None and "eps" in attack.values:
            eps = attack.values["eps"]
            swept.setdefault(attack.norm, set()).update(float(e) for e in (eps if isinstance(eps, list) else [eps]))
    return {norm: sorted(values) for norm, values in swept.items()}


def attack_norms(attacks: list[dict[str, Any]]) -> dict[str, str | None]:
    """The threat model (norm) of each configured attack, by id."""
    return {attack_id: attack.norm for attack_id, attack in configured(attacks).items()}
