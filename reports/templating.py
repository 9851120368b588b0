"""The jinja environment every HTML output renders with (templates under reports/templates/)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Environment

TEMPLATES = Path(__file__).parent / "templates"


def template_environment() -> "Environment":
    """Every template renders with autoescaping: names and messages in the table are user text.

    `a.b` on a dict reads the key `b` before any attribute: jinja's default prefers attributes, so a
    context key named like a dict method (`items`, `values`) rendered the method instead of the data.
    """
    from collections.abc import Mapping

    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    class KeysFirst(Environment):
        def getattr(self, obj: Any, attribute: str) -> Any:
            if isinstance(obj, Mapping) and attribute in obj:
                return obj[attribute]
            return super().getattr(obj, attribute)

    return KeysFirst(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
