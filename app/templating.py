"""Jinja2 templates (autoescaped) with htmx fragment rendering by block name.

The page helpers (``app.render``) become template globals when an app is created
(``configure``, called by ``app.main.create_app``), not as a side effect of an import.
"""

from __future__ import annotations

from jinja2_fragments.fastapi import Jinja2Blocks

from app import render
from app.settings import PROJECT_ROOT

templates = Jinja2Blocks(directory=str(PROJECT_ROOT / "templates"))


def configure(blocks: Jinja2Blocks) -> None:
    """Register the globals every page template uses (track, legend, sparkline, …)."""
    render.register(blocks.env.globals)
