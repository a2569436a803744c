"""Rendering of package metadata from the jinja2 templates in templates/{deb,rpm}/."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from kheaders_pkg.errors import PackagingError
from kheaders_pkg.hooks import find_data_dir


def templates_dir() -> Path:
    """templates/ beside hooks/: where hooks.py finds its data (checkout, package or wheel)."""
    return find_data_dir() / "templates"


def rpm_escape(value: object) -> str:
    """A literal for a spec file: `%` would start a macro."""
    return str(value).replace("%", "%%")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["rpm_escape"] = rpm_escape
    return env


def render(template: str, **context: object) -> str:
    try:
        return _environment().get_template(template).render(**context)
    except jinja2.TemplateError as e:
        raise PackagingError(f"template {template}: {e}") from None
