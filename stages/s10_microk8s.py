"""Stage 10: MicroK8s from the offline bundle, refreshes held, containerd configured, node ready.

Offline snaps are installed the snapd way: `snap ack X.assert` first, then `snap install X.snap`
(MicroK8s `--classic`), so no `--dangerous` is needed (microk8s.md §10). Refreshes are held because an
auto-refresh restarts or upgrades a running cluster. containerd settings go into
containerd-template.toml only: containerd.toml is regenerated from it on every start (§7), and
registry mirrors are certs.d/<registry>/hosts.toml files read at pull time (no restart).

A node only becomes Ready once Calico runs, and in an air gap Calico and the pod sandbox (pause) image
exist only in the bundle. So this stage imports those few images before it waits for readiness;
stage 20 imports everything else. An installed MicroK8s on another track is refused, never reinstalled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision import facts as F
from provision.config import REGISTRY_RE
from provision.errors import ConfigError, ConflictError, PreflightError, VerifyFailed
from provision.stage import Action, ApplyContext, Check, Node, Plan, PutFile, Role, RunCommand, Scope
from stages import _ascend as A
from stages import _microk8s as M
from stages import _snapd as S


class MicroK8s(M.BundleStage):
    """Install MicroK8s and its base snap from the bundle; hold refreshes; containerd template; wait ready."""

    number = 10
    title = "Install MicroK8s"
    scope = Scope.NODE

    def probes(self, settings: Any, manifest: Any) -> list[F.Probe]:
        return probes(settings, watched_snaps(manifest))

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        return plan(facts, settings, node)

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        return verify(facts, settings, node)


SNAP_DIR = "/var/lib/provision/snaps"  # snaps and assertions in transit; removed once installed


def parse_names(raw: F.Raw) -> list[str]:
    return sorted(F.lines(raw))


snap_files = F.Probe("snap_files", F.quoted("ls -A -- {d} 2>/dev/null; true", d=SNAP_DIR), parse_names)


def probes(settings: Any, snaps: tuple[str, ...] = ("core20", "microk8s")) -> list[F.Probe]:
    npu = [F.path_kind(A.RUNTIME_BIN, "ascend_runtime"), F.path_kind(A.LOG_DIR, "ascend_log_dir")] \
        if settings.enable_npu else []
    return [F.arch, M.snap_list, S.seeded_probe, S.changes_probe(snaps), M.status,
            M.file_probe("template", M.TEMPLATE), M.file_probe("containerd_toml", M.CONTAINERD_TOML),
            mirrors_probe(settings), M.ctr_images, snap_files, *npu]


def watched_snaps(manifest: Any) -> tuple[str, ...]:
    """The snaps this stage installs: a snapd change on them from a killed run must finish first."""
    from provision.bundle import base_snap_for

    return (base_snap_for(manifest.track), "microk8s")


# ---------------------------------------------------------------------------------------------
# Registry mirrors (certs.d/<registry>/hosts.toml)


def registry_dir(registry: str) -> str:
    if not REGISTRY_RE.fullmatch(registry):
        raise ConfigError(f"REGISTRY_MIRRORS_CSV: {registry!r} is not a registry host name",
                          "use REGISTRY=URL pairs such as docker.io=https://mirror.lab.example:5000")
    return f"{M.CERTS_D}/{registry}"


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_str(value: str) -> str:
    """`value` as a TOML basic string (quotes, backslashes and control characters escaped per TOML 1.0)."""
    return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in value) + '"'


def hosts_toml(registry: str, mirror: str) -> str:
    """containerd hosts.toml sending pulls for `registry` to `mirror` first (upstream stays the fallback).
    Values go through toml_str, so the file parses to exactly them whatever config let through."""
    server = "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"
    return ("# Written by provision from REGISTRY_MIRRORS_CSV; edit jhub.env, not this file.\n"
            f"server = {toml_str(server)}\n\n"
            f"[host.{toml_str(mirror)}]\n"
            '  capabilities = ["pull", "resolve"]\n')


def mirrors_probe(settings: Any) -> F.Probe:
    regs = [reg for reg, _ in settings.registry_mirrors_csv]
    script = "".join(F.quoted("printf '== %s\\n' {r}; cat -- {p}/hosts.toml 2>/dev/null; printf '\\n'\n",
                              r=r, p=registry_dir(r)) for r in regs) or "true"
    return F.Probe("mirrors", script, parse_mirrors)


def parse_mirrors(raw: F.Raw) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    for ln in raw.out.splitlines(keepends=True):
        if ln.startswith("== "):
            current = ln[3:].strip()
            out[current] = ""
        elif current is not None:
            out[current] += ln
    return {k: v.removesuffix("\n") for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# containerd template


_SANDBOX_RE = re.compile(r'^(?P<indent>[ \t]*)sandbox_image[ \t]*=[ \t]*"(?P<value>[^"]*)"', re.MULTILINE)


def template_sandbox(text: str) -> str | None:
    m = _SANDBOX_RE.search(text)
    return m.group("value") if m else None


def running_sandbox_stale(template: str | None, running: str | None) -> bool:
    """True when containerd still runs with another sandbox image than the template's: the template was
    edited but MicroK8s was not restarted since (a run killed between the two), so containerd.toml, which
    is regenerated only at start, is behind. A missing file (not started yet) is not stale."""
    if template is None or running is None:
        return False
    return template_sandbox(running) != template_sandbox(template)


def set_sandbox_image(text: str, image: str) -> str:
    """The template with its CRI sandbox_image set to `image`; everything else untouched."""
    if not _SANDBOX_RE.search(text):
        raise ConflictError(f"{M.TEMPLATE} has no sandbox_image line",
                            "this MicroK8s' containerd template is not the one provision knows (microk8s.md §7); "
                            "restore it from /snap/microk8s/current/default-args/containerd-template.toml")
    if '"' in image or "\n" in image:
        raise ConfigError(f"SANDBOX_IMAGE: {image!r} cannot go into a TOML string")
    return _SANDBOX_RE.sub(lambda m: f'{m.group("indent")}sandbox_image = "{image}"', text, count=1)


def desired_template(text: str, sandbox_image: str, ascend_runtime: str = "") -> str:
    """The template with our edits: the sandbox image, and on an NPU node the Ascend runtime as default."""
    new = set_sandbox_image(text, sandbox_image)
    return A.set_ascend_runtime(new, ascend_runtime) if ascend_runtime else new


def running_stale(template: str | None, running: str | None, ascend_runtime: str = "") -> bool:
    """containerd.toml (rendered at the last start) lacks an edit the template has: restart needed."""
    if running_sandbox_stale(template, running):
        return True
    return bool(ascend_runtime) and template is not None and running is not None \
        and A.runtime_configured(template, ascend_runtime) and not A.runtime_configured(running, ascend_runtime)


@dataclass(frozen=True)
class ConfigureContainerd(Action):
    """Set the sandbox image (and on an NPU node the Ascend runtime) in containerd-template.toml and restart
    MicroK8s only if the file changed.

    Read-modify-write at apply time, because on a fresh node the template only exists once the snap is in.
    Also restarts when the template is already right but containerd.toml is not (an earlier run was killed
    after writing the template and before the restart), so an interrupted run cannot leave it stale.
    """

    sandbox_image: str
    ascend_runtime: str = ""  # the Ascend Docker Runtime's path on an NPU node with ENABLE_NPU=true

    def describe(self) -> str:
        npu = f" and the Ascend runtime {self.ascend_runtime} as default runtime" if self.ascend_runtime else ""
        return (f"set sandbox_image = {self.sandbox_image}{npu} in {M.TEMPLATE}; restart MicroK8s "
                "(microk8s stop; microk8s start) if it changed or containerd still runs the old one")

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        text = host.run(["cat", "--", M.TEMPLATE], sudo=True).stdout
        new = desired_template(text, self.sandbox_image, self.ascend_runtime)
        if new == text:
            running = host.run(["cat", "--", M.CONTAINERD_TOML], sudo=True, check=False)
            if not running_stale(new, running.stdout if running.exit_status == 0 else None, self.ascend_runtime):
                return
        else:
            host.put_bytes(new.encode(), M.TEMPLATE, mode=0o644, sudo=True)
        host.run(list(M.mk("stop")), sudo=True, timeout=300)
        host.run(list(M.mk("start")), sudo=True, timeout=300)


@dataclass(frozen=True)
class WaitReady(RunCommand):
    """`microk8s status --wait-ready`, then proof that the readiness holds.

    Right after `microk8s start` (a restart for a new containerd template, or a fresh install) the Node
    object still carries the Ready it had before: status --wait-ready can pass on that stale condition,
    and the kubelet posts NotReady a moment later while containerd and calico-node come back. So after
    it passes, look again `settle` seconds later; not ready then means wait again (bounded by the
    same timeout), so the stage's re-gather never sees a half-started MicroK8s."""

    waits_only = True

    settle: float = 5.0

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        import time

        deadline = time.monotonic() + float(self.timeout or 600)
        while True:
            super().apply(host, ctx)
            M.pause_between_polls(ctx, self.settle, "MicroK8s to stay ready")
            again = host.run(list(M.mk("status", "--format", "yaml")), sudo=True, timeout=120, check=False)
            if M.parse_status(F.Raw(again.stdout, again.exit_status)).get("running"):
                return
            if time.monotonic() >= deadline:
                raise VerifyFailed(f"MicroK8s became ready, then not ready again within {self.settle:g}s",
                                     "see `microk8s inspect` and `microk8s kubectl get nodes`; re-run")


# ---------------------------------------------------------------------------------------------
# Plan


def readiness_images(manifest: Any, settings: Any) -> list[str]:
    """What a node needs before it can turn Ready: the sandbox image and Calico's images."""
    from provision.images import normalize_ref

    refs = [normalize_ref(settings.sandbox_image)]
    refs += [r for r in manifest.core_image_refs() if "/calico/" in r]
    return list(dict.fromkeys(refs))


def installed_track_conflict(installed: Mapping[str, Any], manifest: Any) -> str:
    """'' when the installed microk8s is on the bundle's track, else why not."""
    from provision.bundle import track_of

    have = track_of(installed.get("version", ""))
    tracking = installed.get("tracking", "-")
    tracking_track = track_of(tracking) if tracking not in ("-", "") else ""
    want = manifest.track
    if have and have != want:
        return f"MicroK8s {installed.get('version')} (track {have}) is installed, the bundle carries {want}"
    if tracking_track and tracking_track != want:
        return f"MicroK8s is installed tracking {tracking}, the bundle carries {manifest.microk8s_channel}"
    return ""


def plan(facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
    from provision.bundle import base_snap_for

    manifest = facts["bundle"]
    snapd = facts["snap_list"]
    if not snapd["present"]:
        raise PreflightError(f"{node.name}: snap is not installed", "install snapd from the Ubuntu "
                             "installation media (apt install snapd), then re-run")
    snaps = snapd["snaps"]
    actions: list[Action] = []
    # A killed run can leave snapd installing (its change outlives the client): wait for it, never start
    # a second install (snapd refuses one: 'snap "microk8s" has "install-snap" change in progress').
    busy = S.busy_snaps(facts["snap_changes"], watched_snaps(manifest))
    actions += [S.WaitSnapChange(c.id, c.summary, settings.wait_timeout) for c in busy]
    being_installed = {c.snap for c in busy if c.installs and c.snap not in snaps}

    def install(name: str, classic: bool) -> None:
        snap = manifest.snap(name)
        if snap is None:
            from provision.errors import BundleError

            raise BundleError(f"the bundle has no {name} snap", "add snaps/NAME_REV.snap and .assert "
                              "(`snap download`), then `provision bundle manifest`")
        remote = [f"{SNAP_DIR}/{p.rsplit('/', 1)[-1]}" for p in (snap.assert_file, snap.file)]
        actions.append(SendSnap(snap.assert_file, snap.file, remote[0], remote[1]))
        actions.append(RunCommand(("snap", "ack", remote[0]), f"trust the {name} assertion"))
        argv = ("snap", "install", remote[1]) + (("--classic",) if classic else ())
        actions.append(RunCommand(argv, f"install {name} from the bundle", timeout=900))

    base = base_snap_for(manifest.track)
    if base not in snaps and base not in being_installed:
        install(base, False)
    installed = snaps.get("microk8s")
    if "microk8s" in being_installed:
        pass  # the change waited for above installs it; its track is checked on the next gather
    elif installed is not None:
        why = installed_track_conflict(installed, manifest)
        if why:
            raise ConflictError(f"{node.name}: {why}; provision will not reinstall or upgrade it",
                                "upgrade it deliberately (snap refresh microk8s --channel=...) or remove it "
                                "(sudo snap remove microk8s: this deletes the cluster), or bring a bundle for "
                                "the installed track; then re-run")
    else:
        install("microk8s", True)
    # snapd keeps its own copy of an installed snap: ours only cost disk (GBs with several revisions). A run
    # killed after sending leaves them, so leftovers are removed too; a later install sends them again.
    if any(isinstance(a, SendSnap) for a in actions) or facts.get("snap_files"):
        actions.append(RunCommand(("rm", "-rf", "--", SNAP_DIR), "remove the snap files sent to the node "
                                                                  "(snapd keeps its own copy)"))
    if installed is None or "held" not in installed.get("notes", []):
        actions.append(RunCommand(("snap", "refresh", "--hold", "microk8s"),
                                  "hold MicroK8s refreshes (an auto-refresh restarts the cluster)"))

    template = facts.get("template")
    ascend = ascend_runtime(facts, settings, node)
    if (template is None or desired_template(template, settings.sandbox_image, ascend) != template
            or running_stale(template, facts.get("containerd_toml"), ascend)):
        actions.append(ConfigureContainerd(settings.sandbox_image, ascend))
    if ascend and facts["ascend_log_dir"]["kind"] != "dir":
        actions.append(RunCommand(("mkdir", "-p", "-m", "0750", "--", A.LOG_DIR),
                                  "create the Ascend device plugin's log directory (its hostPath must exist)"))

    mirrors = facts.get("mirrors") or {}
    for reg, url in settings.registry_mirrors_csv:
        want = hosts_toml(reg, url)
        if mirrors.get(reg, "") != want:
            d = registry_dir(reg)
            actions.append(RunCommand(("mkdir", "-p", d), f"create containerd registry dir for {reg}"))
            actions.append(PutFile(f"{d}/hosts.toml", want.encode(), 0o644, f"send {reg} pulls to {url}"))

    ctr = facts.get("ctr_images") or {}
    present = ctr.get("images") if ctr.get("available") else None
    arch = (facts.get("arch") or {}).get("arch", "")
    actions += M.import_actions(manifest, readiness_images(manifest, settings), present, arch, node,
                                "import the images a node needs to turn Ready", float(settings.wait_timeout))

    st = facts.get("status") or {}
    if st.get("installed") and not st.get("running"):
        actions.append(RunCommand(M.mk("start"), "start MicroK8s", timeout=300))
    if actions or not st.get("running"):
        t = settings.wait_timeout
        actions.append(WaitReady(M.mk("status", "--wait-ready", "--timeout", str(t)),
                                 "wait until MicroK8s is ready", timeout=t + 60))
    # a freshly booted host refuses snap installs/refreshes until snapd has seeded: wait for it first
    if not facts["snap_seeded"] and any(isinstance(a, RunCommand) and a.argv[:2] in (("snap", "install"),
                                        ("snap", "refresh")) for a in actions):
        actions.insert(0, S.WaitSeeded(settings.wait_timeout))
    if not actions:
        return Plan.noop("MicroK8s installed, held, configured and ready")
    return Plan(tuple(actions))


def ascend_runtime(facts: Mapping[str, Any], settings: Any, node: Node) -> str:
    """The Ascend runtime to wire into containerd: on an NPU node with ENABLE_NPU=true, '' elsewhere. Preflight
    refuses an NPU node without it; a run with --skip 00 is refused here, before containerd points at nothing."""
    if not settings.enable_npu or Role.NPU not in node.roles:
        return ""
    if facts["ascend_runtime"]["kind"] not in ("file", "link"):
        raise PreflightError(f"{node.name}: the Ascend Docker Runtime ({A.RUNTIME_BIN}) is not installed on this "
                             "NPU node (ENABLE_NPU=true)", A.INSTALL_HINT)
    return A.RUNTIME_BIN


@dataclass(frozen=True)
class SendSnap(Action):
    """Put a snap and its assertion on the node (once: skipped when the sha256 matches)."""

    assert_file: str
    snap_file: str
    remote_assert: str
    remote_snap: str

    def describe(self) -> str:
        return f"send {self.snap_file} and {self.assert_file} to the node"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        from pathlib import Path

        base = Path(ctx.bundle_dir)
        host.run(["mkdir", "-p", "-m", "0700", self.remote_snap.rsplit("/", 1)[0]], sudo=True)
        host.put(base / self.assert_file, self.remote_assert, mode=0o600, sudo=True)
        host.put(base / self.snap_file, self.remote_snap, mode=0o600, sudo=True)


def verify(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    manifest = facts["bundle"]
    snaps = (facts.get("snap_list") or {}).get("snaps") or {}
    mk = snaps.get("microk8s")
    st = facts.get("status") or {}
    checks = [
        Check("microk8s installed", mk is not None, f"{mk['version']} rev {mk['rev']}" if mk else "not installed"),
        Check("microk8s refreshes held", bool(mk) and "held" in mk.get("notes", []),
              hint="sudo snap refresh --hold microk8s"),
        Check("microk8s ready", bool(st.get("running")), hint="microk8s inspect"),
    ]
    bundled = manifest.snap("microk8s")
    if mk and bundled and bundled.revision and mk.get("rev") != bundled.revision:
        checks.append(Check("microk8s revision matches the bundle", False,
                            f"installed rev {mk.get('rev')}, bundle rev {bundled.revision}",
                            "same track, so provision keeps it; refresh deliberately if you want the bundle's",
                            warning=True))
    template = facts.get("template")
    if template is not None:
        have = template_sandbox(template)
        checks.append(Check("containerd sandbox image", have == settings.sandbox_image, f"{have}"))
        npu = settings.enable_npu and Role.NPU in node.roles
        if npu:
            checks.append(Check("containerd default runtime: ascend", A.runtime_configured(template),
                                hint="provision install --only 10"))
        stale = running_stale(template, facts.get("containerd_toml"), A.RUNTIME_BIN if npu else "")
        checks.append(Check("containerd runs with the template's settings", not stale,
                            "containerd.toml is older than containerd-template.toml" if stale else "",
                            "sudo microk8s stop; sudo microk8s start"))
    return checks
