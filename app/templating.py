"""Jinja2 templates (autoescaped) with htmx fragment rendering by block name."""

from __future__ import annotations

from jinja2_fragments.fastapi import Jinja2Blocks

from app.settings import PROJECT_ROOT

templates = Jinja2Blocks(directory=str(PROJECT_ROOT / "templates"))
