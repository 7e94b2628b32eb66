"""Every command and subcommand, given bad paths, fails with one error line and a hint: no traceback, an
exit code from the README's table, nothing created.

The commands are found by walking the click tree, so a new command or path option is covered without
touching this file. Each runs as `python -m provision ...` in a subprocess (the real entry point, so an
uncaught exception would show its traceback). Read-only places are a read-only bind mount in a private
mount namespace (`unshare -m`), so nothing is left mounted whatever happens to the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from provision.cli import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "jhub.env.example"
DOCUMENTED = {1, 2, 3, 4, 5, 130}  # README "Exit codes", less 0
# What a bad value of each option must exit with (others: any documented non-zero code).
EXPECTED = {"env": {2}, "output": {2}, "log_file": {2}, "identity": {2}, "known_hosts": {2}, "bundle": {2, 3}}
# Just enough for a command to reach the option under test (the bad value comes last and wins).
# install: --dry-run changes nothing anywhere; with the example settings it stops in preflight at worst.
BASE = {("install",): ["--dry-run", "--env", str(EXAMPLE)], ("render", "values"): ["--env", "{good_env}"],
        ("bundle", "verify"): ["--bundle", "{bundle}"],
        ("node", "add"): ["192.0.2.1", "--dry-run", "--env", str(EXAMPLE), "--bundle", "{bundle}"],
        ("node", "del"): ["gpu-1", "--dry-run"],
        ("diag", "spawn"): ["alice", "--env", "{good_env}"], ("port-forward", "start"): ["--env", str(EXAMPLE)],
        ("uninstall",): ["--dry-run", "--env", str(EXAMPLE)],
        ("backup",): ["--dry-run", "--env", "{good_env}"],
        ("usage", "serve"): ["--env", "{good_env}"], ("usage", "quota", "set"): ["--user", "alice", "--gpu", "1"],
        ("usage", "quota", "delete"): ["--user", "alice"],
        ("restore",): [str(ROOT / "no-such-backup.tar.gz"), "--dry-run", "--env", "{good_env}"],
        ("bundle", "diff"): ["{bundle}"], ("bundle", "diff", "update_out"): ["{bundle}", "{bundle}"],
        ("bundle", "join"): ["--bundle", "{bundle}"],
        ("bundle", "build"): ["--env", "{good_env}", "--out", "{bundle}", "--list", "--charts-from", "{bundle}/charts",
                              "--snaps-from", "{bundle}/snaps"]}  # (command..., param): for that parameter only


def leaf_commands() -> list[tuple[tuple[str, ...], click.Command]]:
    out = []

    def walk(cmd: click.Command, path: tuple[str, ...], ctx: click.Context) -> None:
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                walk(sub, (*path, name), click.Context(sub, parent=ctx, info_name=name))
        else:
            out.append((path, cmd))

    walk(cli, (), click.Context(cli, info_name="provision"))
    return out


def path_params(cmd: click.Command) -> list[click.Parameter]:
    return [p for p in cmd.params if isinstance(p.type, (click.Path, click.File))]


KINDS = ("missing-folder", "under-a-file", "wrong-kind", "read-only")
CASES = [pytest.param(path, p.name, kind, id=f"{' '.join(path)}-{p.name}-{kind}")
         for path, cmd in leaf_commands() for p in path_params(cmd) for kind in KINDS]
NO_PATHS = [pytest.param(path, id=" ".join(path)) for path, cmd in leaf_commands() if not path_params(cmd)]


def test_the_walk_finds_every_command():
    names = {" ".join(p) for p, _ in leaf_commands()}
    assert {"install", "stages", "config check", "config example", "bundle verify", "bundle list",
            "bundle manifest", "render values"} <= names
    assert len(CASES) >= 4 * 10  # env, bundle, output, log-file, identity, known-hosts across the commands


@pytest.fixture(scope="module")
def can_mount_ro(tmp_path_factory) -> str:
    """'' when a read-only bind mount works here (root, unshare), else why not."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) for a read-only bind mount"
    d = tmp_path_factory.mktemp("ro-probe")
    r = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -o bind,ro "$0" "$0" && ! touch "$0/x" 2>/dev/null',
                        str(d)], capture_output=True, text=True, check=False)
    return "" if r.returncode == 0 else f"read-only bind mount failed: {r.stderr.strip()}"


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """cwd of the command (no jhub.env, no offline-images/ in it) with a file, a folder and a read-only
    folder that holds a complete bundle."""
    from tests.bundle import bundletools as bt

    box = tmp_path / "box"
    (box / "a-dir").mkdir(parents=True)
    (box / "a-file").write_text("not a folder\n")
    bt.build_bundle(box / "ro" / "bundle", gpu=False)
    (tmp_path / "good.env").write_text("AUTH_MODE=native\n")
    return box


def bad_value(box: Path, param: click.Parameter, kind: str) -> str:
    wants_dir = isinstance(param.type, click.Path) and not param.type.file_okay
    name = "x" if wants_dir else "x.out"
    if kind == "missing-folder":
        return str(box / "no-such-folder" / name)
    if kind == "under-a-file":
        return str(box / "a-file" / name)
    if kind == "wrong-kind":
        return str(box / ("a-file" if wants_dir else "a-dir"))
    return str(box / "ro" / ("bundle" if wants_dir else "new.out"))


def tree(box: Path) -> list[str]:
    return sorted(str(p.relative_to(box)) for p in box.rglob("*"))


def run(argv: list[str], box: Path, read_only: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PROVISION_ENV", "PROVISION_BUNDLE")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "provision", *argv]
    if read_only:
        cmd = ["unshare", "-m", "sh", "-c", 'mount -o bind,ro "$0" "$0" && exec "$@"', str(box / "ro"), *cmd]
    return subprocess.run(cmd, cwd=box, env=env, capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)


def assert_one_clear_error(r: subprocess.CompletedProcess) -> None:
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    hints = [ln for ln in r.stderr.splitlines() if ln.startswith("hint: ") and len(ln) > len("hint: ")]
    assert len(errors) == 1 and len(hints) == 1, r.stderr


@pytest.mark.parametrize("path, name, kind", CASES)
def test_bad_path_is_one_line_and_a_hint(path, name, kind, sandbox, can_mount_ro, tmp_path):
    if kind == "read-only" and can_mount_ro:
        pytest.skip(can_mount_ro)
    cmd = dict(leaf_commands())[path]
    param = next(p for p in path_params(cmd) if p.name == name)
    bad = bad_value(sandbox, param, kind)
    opt = [param.opts[0], bad] if isinstance(param, click.Option) else [bad]
    base = [a.format(good_env=tmp_path / "good.env", bundle=sandbox / "ro" / "bundle") for a in BASE.get((*path, name), BASE.get(path, []))]
    before = tree(sandbox)
    r = run([*path, *base, *opt], sandbox, read_only=kind == "read-only")
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert tree(sandbox) == before, "the command created or removed something"
    if kind == "read-only" and r.returncode == 0:
        return  # reading from a read-only place is fine; only writers must refuse
    assert r.returncode in EXPECTED.get(name, DOCUMENTED), (r.returncode, r.stderr)
    assert_one_clear_error(r)
    # The error names the path, unless the run stopped for another reason before using it: an SSH option
    # without --host, or (a read-only place being readable) a preflight check of its own.
    if "only make sense with --host" not in r.stderr and (kind != "read-only" or "read-only" in r.stderr):
        assert bad in r.stderr, r.stderr


@pytest.mark.parametrize("path", NO_PATHS)
def test_commands_without_paths_run_cleanly(path, sandbox):
    before = tree(sandbox)
    r = run(list(path), sandbox, read_only=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert tree(sandbox) == before


@pytest.mark.parametrize("argv, code, text", [
    (["bundle", "manifest", "--bundle", "/nonexistent"], 3, "the bundle folder /nonexistent does not exist"),
    (["render", "values", "--env", "{good_env}", "-o", "/nonexistent/x.yaml"], 2,
     "-o: cannot write /nonexistent/x.yaml: the folder /nonexistent does not exist"),
    (["install", "--dry-run", "--env", "{good_env}", "--log-file", "/etc/hostname/x.log"], 2,
     "--log-file: cannot write /etc/hostname/x.log: /etc/hostname is a file, not a folder"),
    (["config", "check", "--env", "/etc/hostname/jhub.env"], 2,
     "cannot read the settings file /etc/hostname/jhub.env: /etc/hostname is a file, not a folder"),
    (["bundle", "list", "--bogus"], 2, "No such option '--bogus'"),
])
def test_the_reported_cases_name_the_path_and_the_cause(argv, code, text, sandbox, tmp_path):
    r = run([a.format(good_env=tmp_path / "good.env") for a in argv], sandbox, read_only=False)
    assert r.returncode == code, r.stderr
    assert_one_clear_error(r)
    assert f"error: {text}" in r.stderr


def test_read_only_bundle_manifest_is_refused_with_exit_3(sandbox, can_mount_ro):
    if can_mount_ro:
        pytest.skip(can_mount_ro)
    bundle = sandbox / "ro" / "bundle"
    r = run(["bundle", "manifest", "--bundle", str(bundle)], sandbox, read_only=True)
    assert r.returncode == 3, r.stderr
    assert f"error: cannot write {bundle}/manifest.yaml: read-only file system" in r.stderr
    assert "hint: choose a place on a writable file system" in r.stderr


@pytest.mark.parametrize("err, says, hint", [
    (PermissionError(13, "Permission denied", "/srv/x"), "/srv/x: permission denied", "run as root (sudo)"),
    (OSError(28, "No space left on device", "/srv/x"), "/srv/x: no space left on the device", "free some space"),
    (IsADirectoryError(21, "Is a directory", "/srv"), "/srv: is a folder, not a file", "give the path of a file"),
    (OSError(5, "Input/output error", "/srv/x"), "/srv/x: Input/output error", "check the path"),
    (OSError(5, "Input/output error"), "Input/output error", "check the path"),
])
def test_path_error_says_why_and_what_to_do(err, says, hint):
    """The causes a root test cannot provoke for real (EACCES, ENOSPC, EIO) read as clearly as the rest."""
    from provision.errors import BundleError, path_error

    e = path_error(err, cls=BundleError)
    assert e.message == says and e.hint.startswith(hint) and e.exit_code == 3
