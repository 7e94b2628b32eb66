"""`provision bundle verify|list|manifest`: check, show and (re)write the offline bundle's manifest."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from provision.commands.options import bundle_option, env_option


@click.group()
def bundle() -> None:
    """Check the offline bundle: files, checksums, images."""


class _Progress:
    """Per-file byte progress on a TTY (stderr); silent otherwise, so logs and pipes stay clean."""

    BIG = 32 * 1024 * 1024

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.current = ""
        self.last = 0

    def __call__(self, path: str, done: int, total: int) -> None:
        if not self.tty or total < self.BIG:
            return
        pct = done * 100 // max(total, 1)
        if path != self.current or pct != self.last or done >= total:
            self.current, self.last = path, pct
            end = "\n" if done >= total else ""
            click.echo(f"\r  reading {path}: {done / 2**20:,.0f} / {total / 2**20:,.0f} MiB ({pct}%)",
                       err=True, nl=False)
            if end:
                click.echo("", err=True)


@bundle.command("verify")
@bundle_option
@env_option
@click.option("--no-env", is_flag=True, help="Check the bundle's integrity only, even when jhub.env exists.")
def verify(bundle: str, env: str, no_env: bool) -> None:
    """Check every file's presence, size and sha256, the images inside each tarball and each snap against
    its assertion; with jhub.env (--env FILE, or ./jhub.env when present) also the MicroK8s track,
    charts and images the settings need. Lists every problem at once; exit 3 when any.

    \b
    Examples:
      provision bundle verify --bundle /media/usb/offline-images            # integrity (+ ./jhub.env if any)
      provision bundle verify --bundle /media/usb/offline-images --env jhub.env
    """
    from provision.bundle import load_manifest, verify_bundle
    from provision.errors import BundleError, path_error

    _bundle_dir(bundle)
    settings, scope = _verify_settings(env, no_env)
    try:
        problems = verify_bundle(bundle, settings, needs=_needs(settings), progress=_Progress())
    except OSError as e:
        raise path_error(e, "cannot read", BundleError) from None
    if problems:
        for p in problems if len(problems) > 1 else ():
            click.secho(f"  {p}", fg="red", err=True)
        click.echo(scope, err=True)
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems with the offline bundle {bundle}"
        raise BundleError(head, "replace the files named above from the original bundle (or re-create "
                          "it and run `provision bundle manifest`), then verify again")
    m = load_manifest(bundle)
    total = sum(f.size for f in m.files.values())
    click.echo(f"{bundle}: OK: {len(m.files)} files ({total / 2**20:,.1f} MiB), {len(m.images)} images, "
               f"{len(m.snaps)} snaps, {len(m.charts)} charts; MicroK8s {m.microk8s_channel}")
    click.echo(scope)


def _needs(settings):
    """What the JupyterHub deployment needs from the bundle, when there are settings to say so."""
    from provision.bundle import Needs
    from provision.jupyterhub.needs import bundle_needs

    return bundle_needs(settings) if settings is not None else Needs()


def _verify_settings(env: str, no_env: bool):
    """(settings or None, the line that says which checks ran). jhub.env is optional: a bundle can be
    verified where it was built, before any settings exist; --env FILE (or $PROVISION_ENV) must exist."""
    from provision.config import load_settings
    from provision.errors import ConfigError

    given = click.get_current_context().get_parameter_source("env") is not click.core.ParameterSource.DEFAULT \
        or bool(os.environ.get("PROVISION_ENV"))
    if no_env:
        if given:
            raise ConfigError("--env and --no-env exclude each other", "drop one of them")
        return None, "--no-env: integrity only (files, sizes, sha256, images, snap assertions)"
    if not given and not Path(env).exists():
        return None, "no jhub.env: integrity only; pass --env for the settings checks"
    return load_settings(env, check_files=False), f"checked against {env}"


def _bundle_dir(bundle: str) -> Path:
    """The bundle folder, which must exist before anything is read or written in it (BundleError, exit 3)."""
    from provision.errors import BundleError

    p = Path(bundle)
    if not p.is_dir():
        raise BundleError(f"the bundle folder {p} does not exist",
                          "pass --bundle DIR: the offline-images/ folder of the offline bundle (or set "
                          "$PROVISION_BUNDLE)")
    return p


@bundle.command("list")
@bundle_option
@click.option("--role", "roles", multiple=True,
              type=click.Choice(["control-plane", "worker", "gpu", "npu"]),
              help="Only images a node with this role imports (repeatable).")
def list_(bundle: str, roles: tuple[str, ...]) -> None:
    """List the bundle's snaps, images (with roles and digests) and charts.

    \b
    Example:
      provision bundle list --role worker --role gpu
    """
    from provision.bundle import images_for_roles, load_manifest

    _bundle_dir(bundle)
    m = load_manifest(bundle)
    images = images_for_roles(m, roles) if roles else list(m.images)
    if not roles:
        click.echo(f"MicroK8s {m.microk8s_channel}")
        for s in m.snaps:
            click.echo(f"snap   {s.name:<12} rev {s.revision or '?':<6} {s.file}{'  (classic)' if s.classic else ''}")
        for c in m.charts:
            click.echo(f"chart  {c.name:<12} {c.version:<8} {c.file}")
    for i in images:
        click.echo(f"image  {i.ref}  {i.digest[:19]}  {','.join(i.platforms) or '?'}  "
                   f"[{','.join(sorted(i.roles))}]  {i.file}")


@bundle.command("manifest")
@bundle_option
@click.option("--channel", default="1.30/stable", show_default=True,
              help="MicroK8s channel the snap was downloaded from.")
@click.option("--roles", "roles", multiple=True, metavar="TARBALL=ROLE[,ROLE]",
              help="Roles for one tarball (default: control-plane,worker = every node). Repeatable.")
def manifest(bundle: str, channel: str, roles: tuple[str, ...]) -> None:
    """Write manifest.yaml from the files in the bundle: snaps/*.snap + .assert, images/*.tar
    (refs and digests read from inside each tarball), charts/NAME-VERSION.tgz.

    \b
    Example:
      provision bundle manifest --bundle offline-images --roles images/gpu-operator.tar=gpu
    """
    from provision.bundle import EVERY_NODE, ROLES, manifest_path, write_manifest
    from provision.errors import BundleError, ConfigError, path_error

    _bundle_dir(bundle)
    tar_roles: dict[str, list[str]] = {p.relative_to(bundle).as_posix(): list(EVERY_NODE)
                                       for p in sorted(Path(bundle).glob("images/*.tar"))}
    for spec in roles:
        tar, sep, rs = spec.partition("=")
        wanted = [r.strip() for r in rs.split(",") if r.strip()]
        if not sep or not wanted or any(r not in ROLES + ("all",) for r in wanted):
            raise ConfigError(f"--roles {spec!r}: expected TARBALL=ROLE[,ROLE] with roles from "
                              f"{', '.join(ROLES)} or all")
        tar_roles[tar.strip()] = wanted
    target = manifest_path(bundle)
    try:
        m = write_manifest(bundle, microk8s_channel=channel, images=tar_roles)
    except OSError as e:  # a read-only bundle (write-protected stick, ro mount) or an unreadable file in it
        writing = os.fsdecode(e.filename or "").startswith(str(target))
        raise path_error(e, "cannot write" if writing else "cannot read", BundleError,
                         path=target if writing else None) from None
    click.echo(f"{bundle}/manifest.yaml: {len(m.files)} files, {len(m.images)} images, {len(m.snaps)} snaps, "
               f"{len(m.charts)} charts")
