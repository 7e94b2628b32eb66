"""`provision backup` and `provision restore`: the hub database, the settings, the usage portal's records (with
ENABLE_USAGE_PORTAL) and (with --homes) the users' files, as one dated archive with a manifest and sha256 sums;
restore puts them into a fresh install.

The domain (what goes in, the manifest, the code run in the hub pod, the restore pod) is stages/_backup.py;
this module reaches the control node as `install` does (this machine or --host) and drives it. Nothing a
member holds ever passes through a command's stdout (which the log keeps): data travels as files in a
private staging folder on the control node.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from provision.commands.options import env_option
from provision.inventory import host_options

STAGING = "/var/tmp/provision-backup.XXXXXX"  # on the control node: the login user's 0700 folder
EXEC_TIMEOUT = 1800  # one kubectl exec or tar of a large database or home


def _common(f):
    f = click.option("--verbose", "-v", is_flag=True, help="Show every command (masked) as it runs.")(f)
    f = click.option("--log-file", type=click.Path(dir_okay=False), help="Log file [default: as for install].")(f)
    f = click.option("--dry-run", is_flag=True, help="Show what would be copied or replaced; change nothing.")(f)
    return host_options(env_option(f))


@click.command()
@click.option("--to", "to_dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder (on this machine) the archive and its .sha256 are written to.")
@click.option("--homes", is_flag=True,
              help="Also copy user homes and student work (their sizes are shown first).")
@_common
def backup(to_dir: str, homes: bool, env: str, dry_run: bool, log_file: str | None, verbose: bool,
           **host_kwargs: Any) -> None:
    """Back up the hub database, the settings, the usage portal's records and, with --homes, the users' files.

    Writes DIR/provision-backup-<cluster>-<UTC time>.tar.gz (mode 0600: it holds jhub.env's secrets and the
    users' password hashes) and beside it the archive's sha256 (`sha256sum -c FILE.sha256` checks it). The
    database is copied while the hub runs, consistently (sqlite's online backup API inside the hub pod); an
    external HUB_DB_URL database is dumped with pg_dump/mysqldump on the control node. With
    ENABLE_USAGE_PORTAL=true the portal's sessions, quotas and groups go in too: its SQLite database copied the
    same consistent way on the control node, or its USAGE_DB_URL PostgreSQL database dumped with pg_dump.

    \b
    Examples:
      sudo provision backup --to /backup                 # database + settings
      sudo provision backup --to /backup --homes         # + homes and student work (sizes shown first)
      sudo provision backup --homes --dry-run            # what would be copied, with sizes
      provision backup --host ubuntu@10.0.0.5 --to .     # the control node over SSH; the archive lands here

    Exit codes: 0 written, 1 a step failed (nothing written), 2 bad settings or options,
    3 a needed tool is missing on the control node.
    """
    _main(lambda console, settings: _backup(console, settings, env, Path(to_dir), homes, dry_run, host_kwargs),
          env, log_file, verbose, host_kwargs)


@click.command()
@click.argument("archive", metavar="FROM", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed when stdin is not a terminal).")
@click.option("--skip-usage", is_flag=True,
              help="Leave the usage portal's records as they are (restore the rest of the backup).")
@_common
def restore(archive: str, yes: bool, skip_usage: bool, env: str, dry_run: bool, log_file: str | None,
            verbose: bool, **host_kwargs: Any) -> None:
    """Restore a backup into an installed hub: the database (users, passwords, approvals) and any homes.

    FROM is the .tar.gz `provision backup` wrote; its .sha256 must lie beside it. The archive and every member
    are verified first (a damaged one changes nothing). Then the plan says what will be replaced and asks
    (--yes without a terminal). The hub is stopped while its database is replaced (through a short-lived pod
    that mounts the hub's volume), homes and student work are unpacked over the current ones (owner
    1000:100), the hub is started again and the users are checked. The usage portal's records, when the
    backup has them, replace the portal's database (its service stopped meanwhile), unless --skip-usage.
    Running it again gives the same result.

    \b
    Examples:
      sudo provision restore /backup/provision-backup-node1-20261130T120000Z.tar.gz --dry-run
      sudo provision restore /backup/provision-backup-node1-20261130T120000Z.tar.gz
      sudo provision restore FILE.tar.gz --yes            # unattended

    Exit codes: 0 restored, 1 a step failed (re-run to finish), 2 bad settings, options or file,
    4 another run holds the lock, 5 the archive is damaged, or the users are not back after the restore,
    6 refused: a newer JupyterHub's database, a database kind the settings do not use, usage portal records
    with ENABLE_USAGE_PORTAL=false (enable it, or --skip-usage), or not confirmed.
    """
    _main(lambda console, settings: _restore(console, settings, Path(archive), yes, dry_run, host_kwargs,
                                             skip_usage),
          env, log_file, verbose, host_kwargs)


def _main(work, env: str, log_file: str | None, verbose: bool, host_kwargs: dict) -> None:
    from provision.cli import exit_with
    from provision.errors import ProvisionError

    console = None
    try:
        import getpass

        from provision.commands.install import _console
        from provision.config import load_settings

        settings = load_settings(env)
        if host_kwargs.get("ask_pass"):
            host_kwargs["password"] = getpass.getpass("SSH/sudo password: ")
        console = _console(settings, log_file, verbose, (host_kwargs.get("password") or "",))
        work(console, settings)
    except ProvisionError as e:
        exit_with(e, console)


# ---------------------------------------------------------------------------------------------
# The control node: a private staging folder, commands with their data in files


class Staging:
    """A 0700 folder of the login user on the control node: root writes members there, they are handed to the
    login user and fetched (SFTP as that user), or sent there and read by root. Removed at the end."""

    def __init__(self, host: Any, path: str, user: str):
        self.host, self.path, self.user = host, path, user

    def remote(self, name: str) -> str:
        return f"{self.path}/{name}"

    def fetch(self, name: str, local: Path) -> None:
        self.host.run(["chown", "--", self.user, self.remote(name)], sudo=True, timeout=60)
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.host.get(self.remote(name), local)
        local.chmod(0o600)
        self.host.run(["rm", "-f", "--", self.remote(name)], sudo=True, timeout=60, check=False)

    def send(self, local: Path, name: str) -> str:
        self.host.put(local, self.remote(name), mode=0o600)
        return self.remote(name)

    def send_bytes(self, data: bytes, name: str) -> str:
        self.host.put_bytes(data, self.remote(name), mode=0o600)
        return self.remote(name)


@contextlib.contextmanager
def staging(host: Any) -> Iterator[Staging]:
    user = host.run(["id", "-un"], timeout=30).stdout.strip()
    path = host.run(["mktemp", "-d", STAGING], timeout=30).stdout.strip()
    try:
        yield Staging(host, path, user)
    finally:
        host.run(["rm", "-rf", "--", path], sudo=True, timeout=300, check=False)


def _sh(host: Any, title: str, template: str, timeout: float = EXEC_TIMEOUT, **values: str) -> Any:
    """A shell line on the control node as root; `title` is its first line, all the log shows of it."""
    from provision import facts as F

    return host.run(["sh", "-c", f"# provision: {title}\n" + F.quoted(template, **values)], sudo=True,
                    timeout=timeout, check=False)


def _tail(r: Any) -> str:
    lines = (r.stderr.strip() or r.stdout.strip()).splitlines()
    return lines[-1][:300] if lines else f"exit {r.exit_status}"


def _gather(host: Any, settings: Any, extra: list | None = None) -> dict[str, Any]:
    from provision import facts as F
    from stages import _backup as B

    return F.gather(host, B.hub_probes(settings.hub_namespace) + (extra or []), sudo=True)


def _python(host: Any, script: str, arg: dict) -> Any:
    """A short read-only Python script as root on the control node → its JSON (None when it failed)."""
    from provision import facts as F

    r = host.run(["sh", "-c", F.quoted("python3 -c {py} {arg}", py=script, arg=json.dumps(arg))], sudo=True,
                 timeout=900, check=False)
    try:
        return json.loads(r.stdout) if r.exit_status == 0 else None
    except ValueError:
        return None


def _hub_info(host: Any, ns: str, pod: str, db_path: str) -> dict[str, Any]:
    from stages import _backup as B

    r = _sh(host, "ask the hub what it knows",
            "microk8s kubectl exec -n {ns} {pod} -c hub -- python3 -c {py} {db}", timeout=300,
            ns=ns, pod=pod, py=B.HUB_INFO_PY, db=db_path)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.exit_status == 0 else {}
    except (ValueError, IndexError):
        return {}


def _db_path(deploy: dict | None) -> str:
    from stages import _backup as B

    try:
        return B.restore_pod(deploy)[1] if deploy else ""
    except (B.BackupError, KeyError, StopIteration):
        return ""


def _need_hub(facts: dict, settings: Any, what: str) -> tuple[dict, str]:
    from stages import _backup as B

    ns = settings.hub_namespace
    deploy, pod = facts.get("hub_deploy"), B.running_hub_pod(facts.get("hub_pods"))
    if deploy is None:
        raise B.BackupError(f"no JupyterHub in namespace {ns} on {facts.get('hostname') or 'the control node'}",
                            f"install it first (`sudo provision install`), then {what}", exit_code=2)
    if pod is None:
        raise B.BackupError(f"the hub pod in {ns} is not running",
                            f"start it (`sudo provision install` converges it; `provision diag` says why it is "
                            f"down), then {what}")
    return deploy, pod


# ---------------------------------------------------------------------------------------------
# backup


def _backup(console, settings, env: str, to_dir: Path, homes: bool, dry_run: bool, host_kwargs: dict) -> None:
    from provision import __version__
    from provision.errors import ConfigError
    from provision.inventory import open_inventory
    from provision.jupyterhub import RELEASE
    from stages import _backup as B

    _writable_folder(to_dir)
    if homes and B.homes_refusal(settings):
        raise ConfigError(f"--homes: {B.homes_refusal(settings)}")
    kind = B.db_kind(settings.hub_db_url.reveal())
    ext = B.external_db(settings.hub_db_url.reveal()) if kind != "sqlite" else None
    usage = B.usage_db(settings)
    ns = settings.hub_namespace
    with open_inventory(on_command=console.on_command, **host_kwargs) as inv:
        host = inv.host(inv.control)
        facts = _gather(host, settings)
        deploy, pod = _need_hub(facts, settings, "back it up")
        cluster = facts.get("hostname") or inv.control.name
        release = B.release_info(facts.get("releases"), RELEASE)
        folders = _user_folders(host, settings, facts) if homes else {}
        console.line(f"==> backup of {cluster} (namespace {ns})", "header")
        console.line(f"  hub database: {kind}" + (f" ({ext.kind} on {ext.host}, dumped with {ext.tools[0]})"
                                                   if ext else " (online copy in the hub pod, while it runs)"))
        console.line(f"  settings: {env} (0600 in the archive)")
        if usage:
            console.line(f"  usage portal records: {usage.describe()}" + (" (dumped with pg_dump)" if usage.ext else
                                                                           " (online copy on the control node)"))
        if homes:
            _show_folders(console, folders)
        when = datetime.datetime.now(datetime.timezone.utc)
        target = to_dir / B.archive_name(cluster, when)
        total = sum(f["size"] for area in folders.values() for f in area.values())
        free = shutil.disk_usage(to_dir).free
        if total > free:
            console.warn(f"{to_dir} has {B.human(free)} free for up to {B.human(total)} of files "
                         "(compression may make it fit)")
        if dry_run:
            console.line(f"dry run: nothing copied; the archive would be {target}", "ok")
            return
        work = Path(tempfile.mkdtemp(prefix=".provision-backup-", dir=to_dir))
        try:
            with staging(host) as st:
                members: list[B.Member] = []
                if ext:
                    hub = _dump_external(console, host, st, ext, work, members)
                    info = _hub_info(host, ns, pod, "")
                    hub.update({"jupyterhub_version": info.get("jupyterhub_version", "")})
                else:
                    hub = _copy_sqlite(console, host, st, ns, pod, _db_path(deploy), work, members)
                env_copy = work / "settings" / "jhub.env"
                env_copy.parent.mkdir(mode=0o700, exist_ok=True)
                env_copy.write_bytes(Path(env).read_bytes())
                env_copy.chmod(0o600)
                members.append(B.Member("settings/jhub.env", env_copy, "the settings file used (jhub.env; secrets)"))
                usage_meta = _copy_usage(console, host, st, usage, work, members) if usage else None
                _copy_folders(console, host, st, folders, work, members)
            man = B.manifest(members, cluster=cluster, created=when, namespace=ns, release=release, hub=hub,
                             storage={"homes": B.storage_kind(settings), "with_homes": homes},
                             provision_version=__version__, usage=usage_meta)
            digest = B.write_archive(target, members, man, _progress(console))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        size = target.stat().st_size
        console.line(f"wrote {target} ({B.human(size)}, {len(members)} members + {B.MANIFEST})", "ok")
        console.line(f"sha256 {digest}  ({B.sidecar(target).name}; check with: sha256sum -c {B.sidecar(target).name})")
        users = hub.get("users")
        if users is not None:
            console.line(f"hub users in the backup: {len(users)}")


def _writable_folder(path: Path) -> None:
    """--to must be a folder this user can write, said before anything is copied (exit 2, naming the path)."""
    import os

    from provision.errors import ConfigError

    if not path.exists():
        raise ConfigError(f"--to {path}: no such folder", "create it first, or give another folder")
    if not path.is_dir():
        raise ConfigError(f"--to {path}: is a file, not a folder", "give the folder the archive should go to")
    if not os.access(path, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(path) else "permission denied"
        raise ConfigError(f"--to {path}: cannot write there ({why})", "give a writable folder (run as root if it "
                          "is root's)")


def _read_only(path: Path) -> bool:
    import os

    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _copy_sqlite(console, host, st: Staging, ns: str, pod: str, db_path: str, work: Path,
                 members: list) -> dict[str, Any]:
    from stages import _backup as B

    if not db_path:
        raise B.BackupError("the hub deployment has no hub-db-dir volume, yet HUB_DB_URL is empty",
                            "check that these are the settings the hub was installed with (--env)")
    out = st.remote("hub.b64")
    t = time.monotonic()
    r = _sh(host, "copy the hub database (sqlite online backup, in the hub pod)",
            "microk8s kubectl exec -n {ns} {pod} -c hub -- python3 -c {py} {db} > {out}",
            ns=ns, pod=pod, py=B.HUB_BACKUP_PY, db=db_path, out=out)
    if r.exit_status:
        raise B.BackupError(f"copying the hub database in pod {pod} failed: {_tail(r)}",
                            "check `microk8s kubectl logs -n " + ns + " deploy/hub`, then re-run")
    local = work / "hub.b64"
    st.fetch("hub.b64", local)
    meta, data = B.parse_backup_output(local.read_text())
    local.unlink()
    db = work / "hub" / B.DB_FILE
    db.parent.mkdir(mode=0o700, exist_ok=True)
    with open(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
    members.append(B.Member(f"hub/{B.DB_FILE}", db, "hub database (sqlite online backup, integrity_check ok)"))
    console.line(f"  hub database: {B.human(len(data))}, {len(meta['users'])} users, schema "
                 f"{meta['schema_revision']} (JupyterHub {meta['jupyterhub_version']}), integrity ok, "
                 f"{time.monotonic() - t:.1f}s")
    return {"db": "sqlite", **{k: meta[k] for k in ("jupyterhub_version", "schema_revision", "users", "approved",
                                                     "integrity")}}


def _dump_external(console, host, st: Staging, ext, work: Path, members: list, member: str = "",
                   what: str = "hub database", key: str = "HUB_DB_URL") -> dict[str, Any]:
    """The external database into member (default: the hub's, ext.member) with pg_dump/mysqldump on the control
    node; the password only in a 0600 file of the staging folder."""
    from provision.errors import EXIT_PREFLIGHT
    from stages import _backup as B

    tool = ext.tools[0]
    member = member or ext.member
    if host.run(["sh", "-c", 'command -v "$1"', "sh", tool], timeout=30, check=False).exit_status:
        raise B.BackupError(f"{tool} is not installed on the control node, so the {ext.kind} {what} cannot be "
                            "dumped", f"install it there (apt install {_client_package(ext.kind)}), then re-run",
                            exit_code=EXIT_PREFLIGHT)
    cred = st.send_bytes(ext.credentials().encode(), "db-credentials")
    name = Path(member).name
    r = host.run(ext.dump_argv(cred, st.remote(name)), timeout=EXEC_TIMEOUT, check=False)
    host.run(["rm", "-f", "--", cred], timeout=30, check=False)
    if r.exit_status:
        raise B.BackupError(f"{tool} failed: {_tail(r)}", f"check {key} and that the database answers from the "
                            "control node, then re-run")
    local = work / member
    st.fetch(name, local)
    members.append(B.Member(member, local, f"{what} ({ext.kind}, {tool})"))
    console.line(f"  {what}: {ext.kind} dump {B.human(local.stat().st_size)}")
    return {"db": ext.kind, "users": None}


def _copy_usage(console, host, st: Staging, usage, work: Path, members: list) -> dict[str, Any] | None:
    """The usage portal's records: its PostgreSQL database dumped as the hub's external one, or its SQLite file
    copied on the control node with the online backup API (consistent while the collector writes). None when
    the portal has no database yet."""
    from stages import _backup as B

    if usage.ext:
        _dump_external(console, host, st, usage.ext, work, members, B.USAGE_DUMP, "usage portal database",
                       "USAGE_DB_URL")
        return {"db": "postgres"}
    t = time.monotonic()
    r = _sh(host, "copy the usage portal's database (sqlite online backup)", "python3 -c {py} {db} {out}",
            py=B.USAGE_BACKUP_PY, db=usage.path, out=st.remote("usage.sqlite"))
    if r.exit_status:
        raise B.BackupError(f"copying the usage portal's database {usage.path} failed: {_tail(r)}",
                            "check python3 and that the file is a SQLite database on the control node, then re-run")
    meta = B.parse_usage_meta(r.stdout)
    if meta.get("missing"):
        console.warn(f"usage portal: no database at {usage.path} yet (the portal has not recorded anything): "
                     "none in the archive")
        return None
    local = work / B.USAGE_SQLITE
    st.fetch("usage.sqlite", local)
    if local.stat().st_size != meta.get("size") or B.sha256_file(local) != meta.get("sha256"):
        raise B.BackupError("the usage portal's database copy arrived damaged (size or sha256 differs)",
                            "re-run the backup")
    members.append(B.Member(B.USAGE_SQLITE, local, "usage portal database (sqlite online backup, integrity_check ok)"))
    console.line(f"  usage portal: {B.human(meta['size'])}, {meta.get('sessions')} sessions ({meta.get('running')} "
                 f"running), {meta.get('quotas')} quotas, {meta.get('groups')} groups, integrity ok, "
                 f"{time.monotonic() - t:.1f}s")
    return {"db": "sqlite", **{k: meta.get(k) for k in ("schema_version", "sessions", "running", "quotas", "groups")}}


def _client_package(kind: str) -> str:
    return "postgresql-client" if kind == "postgres" else "mysql-client"


def _user_folders(host, settings, facts: dict) -> dict[str, dict[str, dict]]:
    """{area: {dir: {"path", "size", "files"}}} for homes and student work on the control node."""
    from stages import _backup as B

    parents = B.home_parents(settings)
    listed = _python(host, B.LIST_PY, parents)
    if listed is None:
        raise B.BackupError("cannot list the user folders on the control node", "check python3 and sudo there")
    if B.storage_kind(settings) == "hostpath-storage":
        listed["home"] = B.claim_homes(facts.get("pvs"), settings)
    sizes = _python(host, B.SIZES_PY, {"areas": listed})
    if sizes is None:
        raise B.BackupError("cannot measure the user folders on the control node", "check python3 and sudo there")
    return sizes["areas"]


def _show_folders(console, folders: dict) -> None:
    from stages import _backup as B

    rows = [[area, name, B.human(f["size"]), str(f["files"]), f["path"]]
            for area in ("home", "student-work") for name, f in sorted((folders.get(area) or {}).items())]
    total = sum(f["size"] for area in folders.values() for f in area.values())
    if not rows:
        console.line("  user folders: none found")
        return
    console.line(f"  user folders: {len(rows)}, {B.human(total)} in all (before compression):")
    console.table(["AREA", "FOLDER", "SIZE", "FILES", "PATH"], rows)


def _copy_folders(console, host, st: Staging, folders: dict, work: Path, members: list) -> None:
    """One tar.gz per user folder, made on the node, fetched, removed there: the node needs room for one."""
    from stages import _backup as B

    todo = [(area, name, f) for area in ("home", "student-work") for name, f in sorted((folders.get(area) or {}).items())]
    total = sum(f["size"] for _, _, f in todo) or 1
    done = 0
    for i, (area, name, f) in enumerate(todo, 1):
        member = B.member_name("homes" if area == "home" else "student-work", name, i)
        remote = f"folder-{i}.tar.gz"
        r = _sh(host, f"pack a user folder ({area})", "tar --numeric-owner -czf {out} -C {src} .",
                out=st.remote(remote), src=f["path"])
        if r.exit_status not in (0, 1):  # 1: a file changed while it was read (a user still working): kept
            raise B.BackupError(f"packing {f['path']} failed: {_tail(r)}", "check the folder and free space in "
                                "/var/tmp on the control node, then re-run")
        local = work / member
        st.fetch(remote, local)
        members.append(B.Member(member, local, f"{'home' if area == 'home' else 'student work'} of {name}",
                                {"area": area, "dir": name, "data_size": f["size"], "files": f["files"]}))
        done += f["size"]
        console.line(f"  {area} {i}/{len(todo)}: {name} {B.human(f['size'])} "
                     f"({100 * done // total}% of {B.human(total)})" + (" (files changed while copied)"
                                                                        if r.exit_status == 1 else ""))


def _progress(console):
    """Archive writing: a line per 10 % of a member over 64 MiB."""
    from stages import _backup as B

    last: dict[str, int] = {}

    def report(name: str, done: int, size: int) -> None:
        if size < 64 << 20:
            return
        step = 10 * done // size
        if step > last.get(name, 0):
            last[name] = step
            console.line(f"  writing {name}: {B.human(done)} of {B.human(size)} ({step * 10}%)")

    return report


# ---------------------------------------------------------------------------------------------
# restore


def _restore(console, settings, archive: Path, yes: bool, dry_run: bool, host_kwargs: dict,
             skip_usage: bool = False) -> None:
    from provision.inventory import open_inventory

    # the options are checked first (hosts connect lazily: nothing is contacted yet), then the archive, before
    # the control node is asked anything: a damaged archive changes nothing
    with open_inventory(on_command=console.on_command, **host_kwargs) as inv:
        work = Path(tempfile.mkdtemp(prefix="provision-restore-"))
        try:
            _restore_with(console, settings, archive, yes, dry_run, inv, work, skip_usage)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _restore_with(console, settings, archive: Path, yes: bool, dry_run: bool, inv, work: Path,
                  skip_usage: bool = False) -> None:
    from provision.errors import EXIT_REFUSED, ConfigError, ProvisionError
    from provision.lock import NodeLock, RunLock, RunLocks
    from stages import _backup as B

    man = B.read_archive(archive, extract_to=work)
    hub = man["hub"]
    console.line(f"{archive.name}: sha256 ok, {len(man['members'])} members verified (taken {man['created']} "
                 f"on {man['cluster']}, provision {man['provision_version']})", "ok")
    kind_now = B.db_kind(settings.hub_db_url.reveal())
    if hub.get("db") != kind_now:
        raise B.BackupError(f"the backup holds a {hub.get('db')} hub database but the settings use {kind_now}",
                            "restore with the settings the backup was taken with (settings/jhub.env in the "
                            "archive) or a matching HUB_DB_URL", exit_code=EXIT_REFUSED)
    usage = B.usage_restore_target(man, settings, skip_usage)
    ns = settings.hub_namespace
    host = inv.host(inv.control)
    facts = _gather(host, settings)
    deploy, pod = _need_hub(facts, settings, "restore")
    installed = _hub_info(host, ns, pod, _db_path(deploy) if kind_now == "sqlite" else "")
    problem = B.compat_problem(hub, installed)
    if problem:
        raise B.BackupError(problem, "install a bundle whose chart carries that JupyterHub or newer, then restore",
                            exit_code=EXIT_REFUSED)
    folders = [m for m in man["members"] if m.get("area")]
    targets, missing = _folder_targets(host, settings, facts, folders)
    _show_plan(console, man, installed, folders, targets, missing, usage)
    if dry_run:
        console.line("dry run: nothing changed", "ok")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("no terminal to ask on", "pass --yes to restore unattended")
        if not console.confirm("Replace them with the backup's? [y/N]"):
            raise ProvisionError("not confirmed: nothing changed", exit_code=EXIT_REFUSED)
    locks = RunLocks(RunLock(), NodeLock(host, inv.control.name))
    note = locks.acquire()
    if note:
        console.warn(note)
    try:
        with staging(host) as st:
            _put_database(console, host, st, settings, deploy, man, work,
                          lambda: _put_folders(console, host, st, folders, targets, work))
            if usage:
                _put_usage(console, host, st, usage, man, work)
        _check_users(console, host, settings, hub)
    finally:
        locks.release()
    if missing:
        raise B.BackupError(f"{len(missing)} home(s) not restored yet: {', '.join(missing[:10])} (no volume: the "
                            "user has not started a server since the install)",
                            "start their servers once (hub admin page), then run the same restore again: it is "
                            "safe to repeat")
    console.line("restore finished: the users can log in with their old passwords", "ok")


def _folder_targets(host, settings, facts: dict, folders: list[dict]) -> tuple[dict[str, str], list[str]]:
    """Member name → the node folder it is unpacked into, from the CURRENT settings (a new machine may keep
    homes elsewhere); hostpath-storage homes go into the user's bound claim, and are listed as missing when
    the user has no volume yet."""
    from stages import _backup as B

    parents = B.home_parents(settings)
    claims = B.claim_homes(facts.get("pvs"), settings)
    out, missing = {}, []
    for m in folders:
        if m["area"] == "home" and B.storage_kind(settings) == "hostpath-storage":
            if m["dir"] in claims:
                out[m["name"]] = claims[m["dir"]]
            else:
                missing.append(m["dir"])
            continue
        if m["area"] == "home" and B.storage_kind(settings) == "nfs":
            raise B.BackupError("the backup holds homes but the homes are on NFS now, which this node cannot write",
                                "unpack homes/*.tar.gz on the NFS server, or restore onto shared hostPath storage")
        parent = parents.get(m["area"])
        if not parent:
            raise B.BackupError(f"the backup holds {m['area']} folders but the settings have no place for them",
                                "set WORKSHOP_STUDENT_WORK_PATH (student work) in jhub.env and install, then restore")
        out[m["name"]] = f"{parent.rstrip('/')}/{m['dir']}"
    return out, missing


def _show_plan(console, man: dict, installed: dict, folders: list, targets: dict, missing: list,
               usage=None) -> None:
    from stages import _backup as B

    hub = man["hub"]
    now = installed.get("users") or []
    console.line("==> restore plan", "header")
    if hub.get("db") == "sqlite":
        console.line(f"  hub database: the installed hub's ({len(now)} users: {_names(now)}) is REPLACED by the "
                     f"backup's ({len(hub.get('users') or [])} users: {_names(hub.get('users') or [])}; schema "
                     f"{hub.get('schema_revision')}, JupyterHub {hub.get('jupyterhub_version')})")
    else:
        console.line(f"  hub database: the tables in the {hub.get('db')} database are REPLACED by the backup's dump")
    console.line(f"  the hub is stopped while that happens (deploy/hub scaled to 0) and started again "
                 f"(installed JupyterHub {installed.get('jupyterhub_version') or '?'})")
    for m in folders:
        if m["name"] in targets:
            console.line(f"  {m['area']} {m['dir']}: {B.human(m.get('data_size'))} unpacked into {targets[m['name']]} "
                         "(files of the same name are overwritten, owner 1000:100)")
    for d in missing:
        console.line(f"  home {d}: not now (no volume yet)", "warn")
    row, counts = B.usage_member(man), man.get("usage") or {}
    if row and usage:
        held = (f" ({counts.get('sessions')} sessions, {counts.get('quotas')} quotas, {counts.get('groups')} groups)"
                if counts.get("sessions") is not None else "")
        console.line(f"  usage portal records: {usage.describe()} is REPLACED by the backup's{held}; the portal's "
                     "service is stopped meanwhile and started again")
    elif row:
        console.line("  usage portal records: kept as they are (--skip-usage)", "warn")
    console.line("  not in the backup, so kept as installed: the hub's generated secrets (users log in again), "
                 "the settings (settings/jhub.env in the archive is for a new machine's install)")


def _names(users: list) -> str:
    return ", ".join(users[:8]) + (f", … ({len(users) - 8} more)" if len(users) > 8 else "") if users else "none"


def _put_database(console, host, st: Staging, settings, deploy: dict, man: dict, work: Path, also) -> None:
    """Stop the hub, put the database back, run `also` (the folders: nobody can start a server meanwhile), start
    the hub; the hub is started again whatever happened."""
    from stages import _backup as B

    ns = settings.hub_namespace
    member = next(m for m in man["members"] if m["name"].startswith("hub/"))
    local = work / member["name"]
    remote = st.send(local, Path(member["name"]).name)
    replicas = int((deploy.get("spec") or {}).get("replicas") or 1)
    timeout = settings.wait_timeout
    t = time.monotonic()
    _replicas(host, ns, 0, "stop the hub")
    try:
        _wait(host, ns, timeout, "the hub pod to stop",
              lambda: not ((_get(host, "pods", "-n", ns, "-l", B.HUB_LABEL) or {"items": [1]}).get("items")))
        console.line("  hub stopped")
        if member["name"] == f"hub/{B.DB_FILE}":
            _sqlite_into_volume(console, host, st, ns, deploy, remote, member["sha256"], timeout)
        else:
            _external_restore(console, host, st, B.external_db(settings.hub_db_url.reveal()), remote)
        also()
    finally:
        _replicas(host, ns, replicas, "start the hub")
    r = host.run(["microk8s", "kubectl", "rollout", "status", "deployment", B.HUB_DEPLOYMENT, "-n", ns,
                  f"--timeout={timeout}s"], sudo=True, timeout=timeout + 60, check=False)
    if r.exit_status:
        raise B.BackupError(f"the hub did not become ready after the restore: {_tail(r)}",
                            "see `provision diag` and `microk8s kubectl logs -n " + ns + " deploy/hub`")
    console.line(f"  hub database restored and the hub is ready ({time.monotonic() - t:.1f}s)")


def _sqlite_into_volume(console, host, st: Staging, ns: str, deploy: dict, remote: str, sha: str, timeout: int) -> None:
    """Through a short-lived pod with the hub's image that mounts hub-db-dir: works whatever storage backs it."""
    from stages import _backup as B
    from stages._microk8s import pod_problem, pod_ready

    pod, path = B.restore_pod(deploy)
    spec = st.send_bytes(json.dumps(pod).encode(), "restore-pod.json")
    _delete_restore_pod(host, ns)  # one an interrupted run left
    _kubectl(host, "start the restore pod", ["apply", "-f", spec])
    try:
        def ready() -> bool:
            p = _get(host, "pod", B.RESTORE_POD, "-n", ns) or {}
            if p and B.pod_stuck(p):
                raise B.BackupError(f"the restore pod {B.RESTORE_POD} cannot start: {pod_problem(p)}",
                                    "it uses the hub's own image and volume: see `provision diag`")
            return bool(p) and pod_ready(p)
        _wait(host, ns, timeout, f"pod {B.RESTORE_POD}", ready)
        r = _sh(host, "write the hub database into its volume (restore pod)",
                "microk8s kubectl exec -i -n {ns} {pod} -c restore -- python3 -c {py} {db} {sha} < {src}",
                ns=ns, pod=B.RESTORE_POD, py=B.DB_RESTORE_PY, db=path, sha=sha, src=remote)
        if r.exit_status:
            raise B.BackupError(f"writing the hub database failed: {_tail(r)}",
                                "the old database is untouched; re-run the restore")
    finally:
        _delete_restore_pod(host, ns)


def _external_restore(console, host, st: Staging, ext, remote: str, key: str = "HUB_DB_URL") -> None:
    from provision.errors import EXIT_PREFLIGHT
    from stages import _backup as B

    tool = ext.tools[1]
    if host.run(["sh", "-c", 'command -v "$1"', "sh", tool], timeout=30, check=False).exit_status:
        raise B.BackupError(f"{tool} is not installed on the control node", f"install it there (apt install "
                            f"{_client_package(ext.kind)}), then re-run", exit_code=EXIT_PREFLIGHT)
    cred = st.send_bytes(ext.credentials().encode(), "db-credentials")
    try:
        r = host.run(ext.restore_argv(cred, remote), timeout=EXEC_TIMEOUT, check=False)
    finally:
        host.run(["rm", "-f", "--", cred], timeout=30, check=False)
    if r.exit_status:
        raise B.BackupError(f"{tool} failed: {_tail(r)}", f"check {key} and the database, then re-run")


def _put_usage(console, host, st: Staging, usage, man: dict, work: Path) -> None:
    """The usage portal's records back: its service (stage 75's unit, when installed) stopped, the SQLite file
    replaced atomically (or pg_restore into USAGE_DB_URL), the service started again whatever happened."""
    from stages import _backup as B
    from stages.s75_usage_portal import UNIT

    row = B.usage_member(man)
    remote = st.send(work / row["name"], Path(row["name"]).name)
    r = _sh(host, "stop the usage portal", "if systemctl cat {u} >/dev/null 2>&1; then systemctl stop {u} && "
            "echo present; fi", timeout=120, u=UNIT)
    if r.exit_status:
        raise B.BackupError(f"stopping {UNIT} failed: {_tail(r)}", f"see `journalctl -u {UNIT}`, then re-run the "
                            "restore (it is safe to repeat)")
    present = "present" in r.stdout
    started = None
    t = time.monotonic()
    try:
        if usage.ext:
            _external_restore(console, host, st, usage.ext, remote, "USAGE_DB_URL")
        else:
            w = _sh(host, "write the usage portal's database", "python3 -c {py} {db} {sha} {src}",
                    py=B.USAGE_RESTORE_PY, db=usage.path, sha=row["sha256"], src=remote)
            if w.exit_status:
                raise B.BackupError(f"writing the usage portal's database {usage.path} failed: {_tail(w)}",
                                    "the old database is untouched; re-run the restore")
    finally:
        if present:
            started = _sh(host, "start the usage portal", "systemctl start {u}", timeout=120, u=UNIT)
    if started is not None and started.exit_status:
        raise B.BackupError(f"the usage portal did not start again after the restore: {_tail(started)}",
                            f"see `journalctl -u {UNIT} -n 50` and `provision diag`")
    console.line(f"  usage portal records restored into {usage.describe()} ({time.monotonic() - t:.1f}s"
                 + (f"; {UNIT} started again)" if present else f"; {UNIT} is not installed: `sudo provision install` "
                    "runs it with these records)"))


def _put_folders(console, host, st: Staging, folders: list, targets: dict, work: Path) -> None:
    from stages import _backup as B

    todo = [m for m in folders if m["name"] in targets]
    for i, m in enumerate(todo, 1):
        remote = st.send(work / m["name"], f"folder-{i}.tar.gz")
        dest = targets[m["name"]]
        r = _sh(host, f"unpack a user folder ({m['area']})",
                "mkdir -p -- {d} && tar --numeric-owner -xzf {src} -C {d} && chown -R {owner} -- {d} && rm -f -- {src}",
                d=dest, src=remote, owner=f"{B.UID}:{B.GID}")
        if r.exit_status:
            raise B.BackupError(f"unpacking {m['name']} into {dest} failed: {_tail(r)}",
                                "check free space there, then re-run the restore (it is safe to repeat)")
        console.line(f"  {m['area']} {i}/{len(todo)}: {m['dir']} -> {dest} ({B.human(m.get('data_size'))})")


def _check_users(console, host, settings, hub: dict) -> None:
    """The users of the backup are in the running hub's database again (sqlite; an external one is the
    database's own)."""
    from provision.errors import EXIT_VERIFY_FAILED
    from stages import _backup as B

    if hub.get("db") != "sqlite":
        return
    facts = _gather(host, settings)
    pod = B.running_hub_pod(facts.get("hub_pods"))
    info = _hub_info(host, settings.hub_namespace, pod or "", _db_path(facts.get("hub_deploy"))) if pod else {}
    want, have = set(hub.get("users") or []), set(info.get("users") or [])
    if not want <= have:
        raise B.BackupError(f"after the restore the hub lacks users of the backup: {_names(sorted(want - have))}",
                            "re-run the restore; if it repeats, see `microk8s kubectl logs deploy/hub`",
                            exit_code=EXIT_VERIFY_FAILED)
    approved = len(set(info.get("approved") or []) & set(hub.get("approved") or []))
    console.line(f"  users back: {len(want)} ({approved} approved native accounts)")


def _kubectl(host, title: str, args: list[str]) -> None:
    from stages import _backup as B

    r = host.run(["microk8s", "kubectl", *args], sudo=True, timeout=120, check=False)
    if r.exit_status:
        raise B.BackupError(f"{title} failed: {_tail(r)}", "check `sudo microk8s status`, then re-run the restore")


def _replicas(host, ns: str, n: int, title: str) -> None:
    """deploy/hub to n replicas with a patch (what `kubectl scale` does, without needing the scale subresource)."""
    from stages import _backup as B

    _kubectl(host, title, ["patch", "deployment", B.HUB_DEPLOYMENT, "-n", ns, "--type=merge", "-p",
                           json.dumps({"spec": {"replicas": n}})])


def _get(host, *args: str) -> dict | None:
    from stages._cluster import get_json

    return get_json(host, *args)


def _wait(host, ns: str, timeout: int, what: str, done) -> None:
    from stages import _backup as B

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise B.BackupError(f"timed out after {timeout}s waiting for {what}",
                                f"see `microk8s kubectl get pods -n {ns}`; then re-run the restore")
        time.sleep(1)


def _delete_restore_pod(host, ns: str) -> None:
    from stages import _backup as B

    host.run(["microk8s", "kubectl", "delete", "pod", B.RESTORE_POD, "-n", ns, "--ignore-not-found",
              "--wait=true", "--timeout=120s"], sudo=True, timeout=180, check=False)
