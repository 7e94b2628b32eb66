"""`provision render values`: the Helm values stage 70 would release, for review, without a cluster."""

from __future__ import annotations

import os
import sys

import click

from provision.commands.options import bundle_option, env_option


@click.group()
def render() -> None:
    """Print what would be deployed (Helm values), without a cluster."""


@render.command("values")
@env_option
@bundle_option
@click.option("--show-secrets", is_flag=True, help="Print client secrets and database passwords in clear.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (mode 0600) instead of stdout.")
def values(env: str, bundle: str, show_secrets: bool, output: str | None) -> None:
    """Print the JupyterHub chart values built from jhub.env, secrets masked.

    With a bundle (--bundle DIR, or offline-images/ when present) the values are merged over the bundled
    chart's defaults and validated against its values.schema.json, exactly as Helm will, and every image
    they need must be in the bundle manifest. Without one, image tags come from the settings and the values
    are validated against the z2jh 4.2.0 defaults and schema that ship with provision.

    \b
    Examples:
      provision render values --env jhub.env
      provision render values --env jhub.env --bundle /media/usb/offline-images -o /root/jhub-values.yaml --show-secrets
    """
    from provision.config import load_settings
    from provision.jupyterhub import RELEASE
    from provision.jupyterhub.values import (
        ClusterFacts,
        default_templates_dir,
        load_branding,
        release_values,
        to_yaml,
    )

    settings = load_settings(env, check_files=False)
    chart, manifest = _bundle_chart(bundle, settings.z2jh_chart_version)
    rendered = release_values(settings, ClusterFacts(), chart, load_branding(default_templates_dir()))
    if chart is None:
        _check_builtin(rendered.values, settings.z2jh_chart_version)
    for w in rendered.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    if chart is not None and manifest is not None:
        from provision.errors import BundleError
        from provision.jupyterhub.values import missing_images

        missing = missing_images(rendered.values, chart.values, manifest)
        if missing:
            raise BundleError(f"the bundle lacks {len(missing)} image(s) these values need: {', '.join(missing)}",
                              "add them to the bundle (images/*.tar) and rebuild its manifest")
    where = f"validated against bundled chart {chart.name} {chart.version} ({chart.path})" if chart is not None \
        else f"chart {settings.z2jh_chart_version}, validated against the built-in 4.2.0 schema (no bundle)"
    head = (f"# JupyterHub Helm values from {env}: release {RELEASE} in namespace {settings.hub_namespace}, {where}.\n"
            + ("" if show_secrets else "# Secrets are masked; --show-secrets prints them.\n"))
    text = head + to_yaml(rendered.values, show_secrets=show_secrets)
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text)


def _check_builtin(values, version: str) -> None:
    """No bundle: validate against the packaged 4.2.0 chart files, as Helm would (ConfigError on problems)."""
    from provision.jupyterhub.chart import BUILTIN_VERSION, builtin_chart, validate_release_values
    from provision.jupyterhub.values import plain, source_of

    validate_release_values(plain(values), builtin_chart(), source_of)
    if version.lstrip("v") != BUILTIN_VERSION:
        click.secho(f"note: Z2JH_CHART_VERSION is {version} but without a bundle the values were checked against "
                    f"the built-in {BUILTIN_VERSION} schema; pass --bundle DIR for the exact chart",
                    fg="yellow", err=True)


def _bundle_chart(bundle: str, version: str):
    """(chart, manifest) from the bundle; (None, None) when the default bundle folder is absent."""
    from pathlib import Path

    ctx = click.get_current_context()
    explicit = ctx.get_parameter_source("bundle") not in (click.core.ParameterSource.DEFAULT, None) or \
        bool(os.environ.get("PROVISION_BUNDLE"))
    b = Path(bundle)
    if not explicit and not ((b / "manifest.yaml").is_file() or any(b.glob("charts/jupyterhub-*.tgz"))):
        return None, None  # the default folder, not filled yet: render from the settings alone
    from provision.jupyterhub.chart import check_jupyterhub_chart, find_chart, open_chart

    chart = check_jupyterhub_chart(open_chart(find_chart(bundle, "jupyterhub", version)))
    manifest = None
    if (Path(bundle) / "manifest.yaml").is_file():
        from provision.bundle import load_manifest

        manifest = load_manifest(bundle)
    return chart, manifest
