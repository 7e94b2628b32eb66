"""`provision bundle verify|list|manifest`: check, show and (re)write the offline bundle's manifest."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from provision.commands.options import bundle_option, env_option


@click.group()
def bundle() -> None:
    """Build, verify, split and update the offline bundle.

    \b
    On a connected machine:  provision bundle build --env jhub.env --out offline-images [--split-size 4G]
    At the site:             provision bundle join --bundle DIR   (if split), then
                             provision bundle verify --bundle DIR --env jhub.env
    """


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
    from provision.bundle import inspect_bundle, load_manifest, split_line, update_line
    from provision.errors import BundleError, path_error

    _bundle_dir(bundle)
    settings, scope = _verify_settings(env, no_env)
    try:
        report = inspect_bundle(bundle, settings, needs=_needs(settings), progress=_Progress())
    except OSError as e:
        raise path_error(e, "cannot read", BundleError) from None
    problems = report.problems
    for w in report.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
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
    if report.update is not None:
        click.echo(f"{update_line(bundle)} ({len(report.update)} files come from the old bundle)")
    elif report.split:
        click.echo(f"{split_line(bundle)} ({len(report.split)} files are in parts)")


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


# ---------------------------------------------------------------------------------------------
# bundle build (on a connected machine)

#: the upstream Helm repositories `helm pull` uses without --charts-from (reference/gpu-operator.md,
#: network-operator.md; z2jh's own documentation)
CHART_REPOS = {"jupyterhub": "https://hub.jupyter.org/helm-chart/", "gpu-operator": "https://helm.ngc.nvidia.com/nvidia",
               "network-operator": "https://helm.ngc.nvidia.com/nvidia"}
NETWORK_OPERATOR_CHART = "25.7.0"  # the release stage 50 is written against (reference/network-operator.md)


def _chart_wants(settings):
    """The charts the install will use: z2jh at Z2JH_CHART_VERSION, the GPU Operator's when USE_GPU_OPERATOR,
    the Network Operator's when ENABLE_IB."""
    from provision.bundle_build import ChartWant

    wants = [ChartWant(name, version, CHART_REPOS[name], why) for name, version, why in _needs(settings).charts]
    if settings.enable_ib and not any(w.name == "network-operator" for w in wants):
        wants.append(ChartWant("network-operator", NETWORK_OPERATOR_CHART, CHART_REPOS["network-operator"], "ENABLE_IB"))
    return wants


class _BuildOutput:
    """Plain lines (one per image and tarball), or on a terminal the same lines above a rich bar that counts
    images and shows each blob with its size as it is taken (fetched or from the cache)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bars = None
        self.task = None

    def __enter__(self):
        if self.tty:
            from rich import progress as rp
            from rich.console import Console

            self.bars = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                    rp.TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def say(self, line: str) -> None:
        if self.bars is not None:
            self.bars.console.print(line, markup=False, highlight=False)
        else:
            click.echo(line, err=True)

    def progress(self, ev) -> None:
        """provision/oci.py's events: resolved, blob, image (with its bytes and seconds), tarball."""
        mib = ev.size / 2**20
        if self.bars is not None and self.task is None:
            self.task = self.bars.add_task("resolving tags to digests", total=None)
        if ev.kind == "image":
            how = ("all blobs from the cache" if ev.reused else
                   f"fetched in {ev.seconds:.1f}s ({mib / max(ev.seconds, 1e-3):,.1f} MiB/s)")
            self.say(f"image {ev.index}/{ev.total} {ev.ref}: {mib:,.1f} MiB, {how}")
            if self.bars is not None:
                self.bars.update(self.task, total=ev.total, completed=ev.index, description="images")
        elif ev.kind == "blob" and self.bars is not None:
            self.bars.update(self.task, description=f"{ev.digest[7:19]} {mib:,.1f} MiB "
                                                    f"{'cached' if ev.reused else 'fetched'}")
        elif ev.kind == "tarball":
            self.say(f"wrote {ev.ref} ({mib:,.1f} MiB)" if not ev.reused else f"{ev.ref}: unchanged ({mib:,.1f} MiB)")


@bundle.command("build")
@env_option
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Where to write the bundle (created; re-running continues where a previous build stopped).")
@click.option("--list", "list_only", is_flag=True, help="Print the snaps, charts and every image with its roles and "
              "why it is needed; fetch nothing.")
@click.option("--snaps-from", type=click.Path(file_okay=False, exists=True),
              help="Take the microk8s and base snaps (+ .assert) from this folder instead of `snap download`.")
@click.option("--charts-from", type=click.Path(file_okay=False, exists=True),
              help="Take the charts (NAME-VERSION.tgz) from this folder instead of `helm pull`.")
@click.option("--registry-mirror", "mirrors", multiple=True, metavar="REGISTRY=URL",
              help="Pull REGISTRY's images from URL, as containerd mirrors do (repeatable).")
@click.option("--platform", default="linux/amd64", show_default=True, type=click.Choice(["linux/amd64", "linux/arm64"]),
              help="The nodes' platform: only its image blobs and wheels are fetched.")
@click.option("--cache", type=click.Path(file_okay=False), default=None, show_default="~/.cache/provision",
              help="Blob cache and staging: a re-run fetches nothing that is already here.")
@click.option("--keep-going", is_flag=True, help="Fetch every image that can be fetched; list all failures at the end.")
@click.option("--split-size", metavar="SIZE", help="Split files bigger than SIZE (e.g. 4G for FAT32 sticks) into parts.")
@click.option("--no-wheels", is_flag=True, help="Leave out the wheelhouse (provision and its dependencies for pip).")
@click.option("--image-archive", "archives", multiple=True, metavar="FILE", type=click.Path(dir_okay=False, exists=True),
              help="A site's own image from a `docker save` / `podman save` / OCI archive (e.g. a custom "
                   "SINGLEUSER_IMAGE): carried as is instead of fetched (repeatable).")
def build(env: str, out: str, list_only: bool, snaps_from: str | None, charts_from: str | None,
          mirrors: tuple[str, ...], platform: str, cache: str | None, keep_going: bool, split_size: str | None,
          no_wheels: bool, archives: tuple[str, ...]) -> None:
    """Build the offline bundle on a connected machine, from the same settings the install will use: the
    MicroK8s snap (MICROK8S_CHANNEL) and its base snap with assertions, the charts at their configured versions,
    every image the charts (rendered with our values) and the stages need, by digest, and a wheelhouse for
    `pip install --no-index`. Then the manifest, optional split parts, and a strict verify.

    \b
    Examples:
      provision bundle build --env jhub.env --out offline-images --list
      provision bundle build --env jhub.env --out /media/usb/offline-images --split-size 4G
      provision bundle build --env jhub.env --out offline-images \\
          --registry-mirror docker.io=https://mirror.lab.example:5000
      docker save -o nb.tar registry.lab.example/team/notebook:1.0     # SINGLEUSER_IMAGE, the site's own
      provision bundle build --env jhub.env --out offline-images --image-archive nb.tar
    """
    from provision import bundle_build as B
    from provision.config import load_settings
    from provision.errors import PreflightError

    settings = load_settings(env, check_files=False)
    B.check_writable_dir(Path(out), "--out")
    if cache:
        B.check_writable_dir(Path(cache), "--cache")
    req = B.Request(out=Path(out), channel=settings.microk8s_channel, images=[], charts=_chart_wants(settings),
                    snaps_from=Path(snaps_from) if snaps_from else None,
                    charts_from=Path(charts_from) if charts_from else None, mirrors=B.parse_mirrors(mirrors),
                    platform=platform, cache=Path(cache) if cache else B.default_cache(), keep_going=keep_going,
                    split_size=B.parse_size(split_size) if split_size else None, wheels=not no_wheels and not list_only,
                    helm=B.find_helm() or "", project=B.project_dir(), archives=[Path(a) for a in archives])
    missing = B.missing_tools(req, need_images=not list_only)
    if missing:
        for line in missing if len(missing) > 1 else ():
            click.secho(f"  {line}", fg="red", err=True)
        raise PreflightError(missing[0] if len(missing) == 1 else f"{len(missing)} tools missing on this machine",
                             "install them (commands above), then run the same command again")
    with _BuildOutput() as ui:
        charts = B.stage_charts(req.charts, req.cache / "staging" / "charts", req.charts_from, req.helm)
        req.images = _images_needed(settings, charts, req.helm)
        if list_only:
            _print_list(req, charts)
            return
        summary = B.build(req, say=ui.say, progress=ui.progress,
                          verify=lambda d: verify_bundle_strict(d, settings))
    for line in summary.lines():
        click.echo(line)
    click.echo(f"{out}: OK, `provision bundle verify --bundle {out} --env {env}` passes")


def _images_needed(settings, charts, helm: str):
    """The domain's list: every image the charts (rendered with our values) and the stages need."""
    import tempfile

    from provision.jupyterhub.bundle_images import needed_images

    with tempfile.TemporaryDirectory(prefix="provision-charts-") as tmp:
        for c, f in charts:  # one folder holding exactly the charts this build takes
            os.symlink(f.resolve(), Path(tmp) / c.file)
        return needed_images(settings, Path(tmp), helm)


def _print_list(req, charts) -> None:
    from provision.bundle import base_snap_for, track_of

    click.echo(f"snap   microk8s {req.channel} (classic) + {base_snap_for(track_of(req.channel))}, with assertions"
               + (f", from {req.snaps_from}" if req.snaps_from else ", snap download"))
    for c, f in charts:
        click.echo(f"chart  {c.name} {c.version}  ({c.why})  {f}")
    for i in req.images:
        click.echo(f"image  {i.ref}  [{','.join(sorted(i.roles))}]  {i.reason}")
    click.echo(f"{len(req.images)} images, {len(charts)} charts, 2 snaps; platform {req.platform}")


def verify_bundle_strict(out, settings) -> list[str]:
    """The bundle's problems as `provision bundle verify --env` reports them (a split bundle is fine here)."""
    from provision.bundle import inspect_bundle

    return inspect_bundle(out, settings, needs=_needs(settings)).problems


@bundle.command("split")
@bundle_option
@click.option("--split-size", "split_size", default="4G", show_default=True, metavar="SIZE",
              help="The stick's file-size limit: parts stay below it (4G → 4 GiB − 1 byte, FAT32's largest "
                   "file); a plain number is the exact part size in bytes.")
def split(bundle: str, split_size: str) -> None:
    """Cut every file bigger than SIZE into NAME.part000, NAME.part001, ... (each with its sha256 in the
    manifest) so the bundle fits a FAT32 stick; `provision bundle join` puts them back together.

    \b
    Example:
      provision bundle split --bundle offline-images --split-size 4G && cp -r offline-images /media/usb/
    """
    from provision.bundle_split import parse_part_size, split_bundle

    _bundle_dir(bundle)
    size = parse_part_size(split_size)
    done = _bundle_io(lambda: split_bundle(bundle, size))
    click.echo(f"{bundle}: {len(done)} files split into parts of at most {size:,} bytes"
               + (f": {', '.join(done)}" if done else ""))


@bundle.command("join")
@bundle_option
@click.option("--update", "update", type=click.Path(file_okay=False), metavar="DIR",
              help="First apply this update bundle (from `bundle diff OLD NEW --update-out DIR`) to --bundle, "
                   "a copy of the old bundle.")
def join(bundle: str, update: str | None) -> None:
    """Put split files back together (streaming, every part's and the whole sha256 checked, parts removed
    after); with --update, first turn a copy of the old bundle into the new one. Safe to re-run.

    \b
    Examples:
      provision bundle join --bundle /srv/offline-images
      cp -r /srv/offline-images /srv/offline-images.new
      provision bundle join --bundle /srv/offline-images.new --update /media/usb/update-2026-12
    """
    from provision.bundle_split import join_bundle

    _bundle_dir(bundle)
    if update:
        from provision.bundle_diff import apply_update

        _bundle_dir(update)
        _bundle_io(lambda: join_bundle(bundle))  # the old bundle whole, so its files can be reused
        copied = _bundle_io(lambda: apply_update(bundle, update))
        click.echo(f"{bundle}: update applied ({copied} files from {update})")
    joined = _bundle_io(lambda: join_bundle(bundle))
    click.echo(f"{bundle}: {len(joined)} files joined" + (f": {', '.join(joined)}" if joined else "")
               + f"; check it with `provision bundle verify --bundle {bundle}`")


@bundle.command("diff")
@click.argument("old", type=click.Path(file_okay=False))
@click.argument("new", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.option("--update-out", "update_out", type=click.Path(file_okay=False), metavar="DIR",
              help="Write an update bundle to DIR: only the files whose sha256 OLD lacks, and of a changed OCI "
                   "image tarball only the blobs OLD lacks, for a site that has OLD.")
def diff(old: str, new: str, as_json: bool, update_out: str | None) -> None:
    """What changed from bundle OLD to NEW (images and digests, charts, snaps and revisions, other files),
    from their manifests, and per changed image tarball the blobs new and reused; with --update-out, an update
    bundle carrying only the new files and blobs.

    \b
    Examples:
      provision bundle diff /srv/offline-images offline-images
      provision bundle diff /srv/offline-images offline-images --update-out /media/usb/update-2026-12
    """
    import json

    from provision.bundle_diff import _human, diff_bundles, format_diff, write_update

    _bundle_dir(old)
    _bundle_dir(new)
    d = _bundle_io(lambda: diff_bundles(old, new))
    click.echo(json.dumps(d, indent=2) if as_json else format_diff(d))
    if update_out:
        u = _bundle_io(lambda: write_update(old, new, update_out))
        click.echo(f"{update_out}: update bundle written ({u['files']} files, {_human(u['bytes'])}"
                   + (f", {_human(u['blob_saving'])} less by carrying blobs" if u["blob_saving"] else "")
                   + "); "
                   f"apply it with `provision bundle join --bundle COPY_OF_OLD --update {update_out}`",
                   err=as_json)


def _bundle_io(fn):
    """Run a bundle file operation; an OSError (full or read-only stick) becomes one line, exit 3."""
    from provision.errors import BundleError, path_error

    try:
        return fn()
    except OSError as e:
        raise path_error(e, "", BundleError) from None
