"""`provision bundle verify|list|manifest`: check, show and (re)write the offline bundle's manifest."""

from __future__ import annotations

import sys

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
@click.option("--no-env", is_flag=True, help="Check files and images only, not what jhub.env needs.")
def verify(bundle: str, env: str, no_env: bool) -> None:
    """Check every file's presence and sha256, the images inside each tarball, and the images,
    snaps and charts jhub.env needs. Lists every problem at once; exit 3 when any.

    \b
    Example:
      provision bundle verify --bundle /media/usb/offline-images --env jhub.env
    """
    from provision.bundle import load_manifest, verify_bundle
    from provision.config import load_settings
    from provision.errors import BundleError

    settings = None if no_env else load_settings(env)
    problems = verify_bundle(bundle, settings, progress=_Progress())
    if problems:
        for p in problems:
            click.secho(f"  {p}", fg="red", err=True)
        raise BundleError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} with the offline bundle "
                          f"{bundle}", "replace the files named above from the original bundle (or re-create "
                          "it and run `provision bundle manifest`), then verify again")
    m = load_manifest(bundle)
    total = sum(f.size for f in m.files.values())
    click.echo(f"{bundle}: OK: {len(m.files)} files ({total / 2**20:,.1f} MiB), {len(m.images)} images, "
               f"{len(m.snaps)} snaps, {len(m.charts)} charts; MicroK8s {m.microk8s_channel}")


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
    from pathlib import Path

    from provision.bundle import EVERY_NODE, ROLES, write_manifest
    from provision.errors import ConfigError

    tar_roles: dict[str, list[str]] = {p.relative_to(bundle).as_posix(): list(EVERY_NODE)
                                       for p in sorted(Path(bundle).glob("images/*.tar"))}
    for spec in roles:
        tar, sep, rs = spec.partition("=")
        wanted = [r.strip() for r in rs.split(",") if r.strip()]
        if not sep or not wanted or any(r not in ROLES + ("all",) for r in wanted):
            raise ConfigError(f"--roles {spec!r}: expected TARBALL=ROLE[,ROLE] with roles from "
                              f"{', '.join(ROLES)} or all")
        tar_roles[tar.strip()] = wanted
    m = write_manifest(bundle, microk8s_channel=channel, images=tar_roles)
    click.echo(f"{bundle}/manifest.yaml: {len(m.files)} files, {len(m.images)} images, {len(m.snaps)} snaps, "
               f"{len(m.charts)} charts")
