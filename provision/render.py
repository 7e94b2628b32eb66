"""Text files from jinja2 templates shipped in the package (systemd units, the nginx site): StrictUndefined,
so a value the template needs and the caller forgot is an error, never an empty string in a config file."""

from __future__ import annotations

from typing import Any


def render_template(package: str, name: str, **values: Any) -> str:
    """The template `name` under `package`'s templates/ folder (e.g. "systemd/x.service.j2"), rendered."""
    from importlib import resources

    import jinja2

    source = resources.files(package).joinpath("templates", *name.split("/")).read_text("utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(source).render(**values)
