"""Options shared by several commands, so they read the same everywhere."""

from __future__ import annotations

import os

import click


def default_env() -> str:
    return os.environ.get("PROVISION_ENV", "jhub.env")


env_option = click.option("--env", "env", default=default_env, show_default="jhub.env or $PROVISION_ENV",
                          type=click.Path(dir_okay=False), help="Settings file (bash-compatible KEY=value).")

bundle_option = click.option("--bundle", "bundle", default=lambda: os.environ.get("PROVISION_BUNDLE", "offline-images"),
                             show_default="offline-images or $PROVISION_BUNDLE",
                             type=click.Path(file_okay=False),
                             help="The offline bundle directory (snaps, image tarballs, charts, manifest.yaml).")
