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
    they need must be in the bundle manifest. Without one, the values are validated against the chart files
    that ship with provision (z2jh 4.4.0 and 4.2.0; other versions against 4.4.0's). The login page and logo
    are provision's own, or those in $PROVISION_TEMPLATES/jupyterhub/.

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
    version = settings.z2jh_chart_version.lstrip("v")
    chart, manifest = _bundle_chart(bundle, settings.z2jh_chart_version)
    builtin = None
    if chart is None:
        from provision.jupyterhub.chart import builtin_chart, check_jupyterhub_chart

        builtin = check_jupyterhub_chart(builtin_chart(version))
        chart = builtin if builtin.version == version else None  # provision ships this chart's files
    branding = load_branding(default_templates_dir())
    rendered = release_values(settings, ClusterFacts(), chart, branding)
    if chart is None:
        _check_builtin(rendered.values, version, builtin)
    for w in rendered.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    if chart is not None and manifest is not None:
        from provision.errors import BundleError
        from provision.jupyterhub.values import missing_images

        missing = missing_images(rendered.values, chart.values, manifest)
        if missing:
            raise BundleError(f"the bundle lacks {len(missing)} image(s) these values need: {', '.join(missing)}",
                              "add them to the bundle (images/*.tar) and rebuild its manifest")
    if builtin is None:
        where = f"validated against bundled chart {chart.name} {chart.version} ({chart.path})"
    else:
        where = f"chart {version}, validated against the built-in {builtin.version} schema (no bundle)"
    where += f"; login page and logo: {branding.source if branding else 'JupyterHub defaults'}"
    head = (f"# JupyterHub Helm values from {env}: release {RELEASE} in namespace {settings.hub_namespace}, {where}.\n"
            + ("" if show_secrets else "# Secrets are masked; --show-secrets prints them.\n"))
    text = head + to_yaml(rendered.values, show_secrets=show_secrets)
    if output:
        from provision.errors import ConfigError, path_error

        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise path_error(e, "-o: cannot write", ConfigError) from None
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(text)


def _check_builtin(values, version: str, builtin) -> None:
    """No bundle and a chart version provision does not ship: validate against the default chart's packaged
    files, as Helm would (ConfigError on problems), and say so."""
    from provision.jupyterhub.chart import validate_release_values
    from provision.jupyterhub.values import plain, source_of

    validate_release_values(plain(values), builtin, source_of)
    click.secho(f"note: Z2JH_CHART_VERSION is {version} but without a bundle the values were checked against "
                f"the built-in {builtin.version} schema; pass --bundle DIR for the exact chart",
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
