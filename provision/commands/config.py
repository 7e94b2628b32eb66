"""`provision config check`: validate jhub.env and print a summary, secrets masked."""

from __future__ import annotations

import click

from provision.commands.options import env_option


@click.group()
def config() -> None:
    """Check jhub.env and show the settings (secrets masked)."""


@config.command("check")
@env_option
def check(env: str) -> None:
    """Validate jhub.env and print every setting, secrets masked.

    Every problem is listed at once, each with its file, line and key; the exit code is 2 when
    anything is wrong, and nothing is touched either way.

    \b
    Example:
      provision config check --env /etc/provision/jhub.env
    """
    from provision.config import key_specs, load_settings

    settings = load_settings(env)
    shown = settings.masked()
    section = None
    for spec in key_specs():
        if spec.section != section:
            section = spec.section
            click.echo(f"\n{section}:", err=False)
        click.echo(f"  {spec.name:<32} {shown[spec.name]}")
    click.echo(f"\n{env}: OK ({len(shown)} settings)")


@config.command("example")
def example() -> None:
    """Print a fully documented jhub.env (the text of jhub.env.example)."""
    from provision.config import example_text

    click.echo(example_text(), nl=False)
