"""Pure plan tests for stages 10 (MicroK8s) and 20 (images): fresh, converged, partial and refusals."""

from __future__ import annotations

import pytest

from provision import facts as F
from provision.config import Settings
from provision.errors import BundleError, ConflictError, PreflightError
from provision.images import normalize_ref
from provision.stage import PutFile, RunCommand
from stages import _microk8s as M
from stages import _snapd as S
from stages import s10_microk8s as s10
from stages import s20_images as s20
from tests.stages import stagefacts as sf


def facts10(snap_list: str | None = sf.SNAP_LIST_CONVERGED, status: str | None = sf.STATUS_RUNNING,
            template: str | None = sf.TEMPLATE, mirrors: str = "", images: list[str] | None = None,
            arch: str = "x86_64", containerd_toml: str | None = sf.TEMPLATE,
            snap_changes: str = "== core20\nno changes found\n== microk8s\nno changes found\n",
            snap_files: str = "", seeded: bool = True) -> sf.StrictFacts:
    if images is None:
        images = s10.readiness_images(sf.manifest(), Settings())
    return sf.StrictFacts({
        "arch": F.parse_arch(sf.raw(arch + "\n")),
        "snap_list": M.parse_snap_list(sf.raw(snap_list) if snap_list is not None else sf.raw("", 127)),
        "snap_changes": S.parse_snap_changes(sf.raw(snap_changes)),
        "snap_seeded": S.parse_seeded(sf.raw("", 0 if seeded else 124)),
        "status": M.parse_status(sf.raw(status) if status is not None else sf.raw("", 127)),
        "template": M.parse_file(sf.raw(template) if template is not None else sf.raw("", 1)),
        "containerd_toml": M.parse_file(sf.raw(containerd_toml) if containerd_toml is not None else sf.raw("", 1)),
        "mirrors": s10.parse_mirrors(sf.raw(mirrors)),
        "ctr_images": M.parse_ctr_images(sf.raw(sf.ctr_ls(images)) if status is not None else sf.raw("", 127)),
        "snap_files": s10.parse_names(sf.raw(snap_files)),
        "bundle": sf.manifest(),
    })


def kinds(plan) -> list[str]:
    out = []
    for a in plan.actions:
        if isinstance(a, RunCommand):
            out.append(" ".join(a.argv[:3]))
        else:
            out.append(type(a).__name__)
    return out


def test_parsers_read_captured_output():
    snaps = M.parse_snap_list(sf.raw(sf.SNAP_LIST_CONVERGED))["snaps"]
    assert snaps["microk8s"] == {"version": "v1.30.14", "rev": "7394", "tracking": "-", "notes": ["classic", "held"]}
    st = M.parse_status(sf.raw(sf.STATUS_RUNNING))
    assert st["running"] and st["addons"] == {"dns": "enabled", "hostpath-storage": "enabled"}
    assert M.parse_status(sf.raw(sf.STATUS_NOT_RUNNING, 1))["running"] is False
    worker = M.parse_status(sf.raw("This MicroK8s deployment is acting as a node in a cluster.\n"
                                   "Please use the control plane node.\n"))
    assert worker["worker"] and worker["running"]
    imgs = M.parse_ctr_images(sf.raw(sf.ctr_ls(["docker.io/library/busybox:1.28.4"])))["images"]
    assert imgs == {"docker.io/library/busybox:1.28.4": sf.digest("docker.io/library/busybox:1.28.4")}
    assert M.parse_snap_list(sf.raw("", 127)) == {"present": False, "snaps": {}}
    empty = M.parse_snap_list(sf.raw("No snaps are installed yet. Try 'snap install hello-world'.\n"))
    assert empty == {"present": True, "snaps": {}}


def test_fresh_node_installs_everything_in_order():
    plan = s10.plan(facts10(sf.SNAP_LIST_FRESH, status=None, template=None), Settings(), sf.CONTROL)
    k = kinds(plan)
    assert k[:3] == ["SendSnap", "snap ack /var/lib/provision/snaps/core20_2264.assert",
                     "snap install /var/lib/provision/snaps/core20_2264.snap"]
    assert k[3:6] == ["SendSnap", "snap ack /var/lib/provision/snaps/microk8s_7394.assert",
                      "snap install /var/lib/provision/snaps/microk8s_7394.snap"]
    install_mk = plan.actions[5]
    assert install_mk.argv[-1] == "--classic" and plan.actions[2].argv[-1] != "--classic"
    assert plan.actions[6].argv == ("rm", "-rf", "--", "/var/lib/provision/snaps")  # once installed
    assert k[7] == "snap refresh --hold"
    assert k[8] == "ConfigureContainerd"
    imports = [a for a in plan.actions if isinstance(a, M.ImportImages)]
    assert len(imports) == 1 and imports[0].platform == "amd64"
    assert set(imports[0].refs) == {normalize_ref(sf.SANDBOX), "docker.io/calico/cni:v3.25.1",
                                    "docker.io/calico/node:v3.25.1", "docker.io/calico/kube-controllers:v3.25.1"}
    assert plan.actions[-1].argv == ("microk8s", "status", "--wait-ready", "--timeout", "600")


def test_converged_node_plans_nothing():
    plan = s10.plan(facts10(), Settings(), sf.CONTROL)
    assert plan.empty, [a.describe() for a in plan.actions]
    assert all(c.ok for c in s10.verify(facts10(), Settings(), sf.CONTROL))


def test_snap_files_left_by_a_killed_run_are_removed_and_not_needed_again():
    """Sent, then killed before (or during) the install, and snapd finished it: the copies are removed."""
    leftovers = "core20_2264.assert\ncore20_2264.snap\nmicrok8s_7394.snap.provision-tmp\n"
    plan = s10.plan(facts10(snap_files=leftovers), Settings(), sf.CONTROL)
    assert kinds(plan) == ["rm -rf --", "microk8s status --wait-ready"]
    assert "snap_files" in {p.name for p in s10.probes(Settings())}
    assert s10.parse_names(sf.raw("")) == []


def test_unheld_and_stopped_node():
    snap_list = sf.SNAP_LIST_CONVERGED.replace("classic,held", "classic")
    plan = s10.plan(facts10(snap_list, status=sf.STATUS_NOT_RUNNING), Settings(), sf.CONTROL)
    assert kinds(plan) == ["snap refresh --hold", "microk8s start", "microk8s status --wait-ready"]


def test_other_track_is_refused_not_reinstalled():
    with pytest.raises(ConflictError, match=r"v1\.29\.15 \(track 1\.29\) is installed, the bundle carries 1\.30"):
        s10.plan(facts10(sf.SNAP_LIST_OTHER_TRACK), Settings(), sf.CONTROL)


def test_same_track_other_revision_is_kept_with_a_warning():
    f = facts10(sf.SNAP_LIST_CONVERGED.replace("7394", "7400"))
    assert s10.plan(f, Settings(), sf.CONTROL).empty
    warn = [c for c in s10.verify(f, Settings(), sf.CONTROL) if not c.ok]
    assert len(warn) == 1 and warn[0].warning and "7400" in warn[0].detail


def test_no_snapd_is_a_preflight_error():
    with pytest.raises(PreflightError, match="snap is not installed"):
        s10.plan(facts10(snap_list=None, status=None), Settings(), sf.CONTROL)


def test_sandbox_image_missing_from_bundle_is_refused_before_any_change():
    s = Settings(sandbox_image="registry.k8s.io/pause:3.10")
    with pytest.raises(BundleError, match=r"registry.k8s.io/pause:3.10 is not in the bundle"):
        s10.plan(facts10(), s, sf.CONTROL)


def test_sandbox_image_change_edits_template_only_when_bundled():
    s = Settings(sandbox_image="docker.io/calico/node:v3.25.1")  # any bundled image will do for the pure test
    plan = s10.plan(facts10(), s, sf.CONTROL)
    assert kinds(plan) == ["ConfigureContainerd", "microk8s status --wait-ready"]
    new = s10.set_sandbox_image(sf.TEMPLATE, "docker.io/calico/node:v3.25.1")
    assert 'sandbox_image = "docker.io/calico/node:v3.25.1"' in new
    assert new.replace("docker.io/calico/node:v3.25.1", "registry.k8s.io/pause:3.7") == sf.TEMPLATE
    with pytest.raises(ConflictError, match="no sandbox_image"):
        s10.set_sandbox_image("version = 2\n", "x:1")


def test_template_edited_but_not_restarted_is_restarted():
    """A run killed between writing the template and `microk8s stop/start` left containerd.toml behind:
    the re-run must restart (containerd.toml is regenerated only at start), not call it converged."""
    s = Settings(sandbox_image="docker.io/calico/node:v3.25.1")
    edited = s10.set_sandbox_image(sf.TEMPLATE, s.sandbox_image)
    f = facts10(template=edited, containerd_toml=sf.TEMPLATE)
    assert kinds(s10.plan(f, s, sf.CONTROL)) == ["ConfigureContainerd", "microk8s status --wait-ready"]
    assert [c.name for c in s10.verify(f, s, sf.CONTROL) if not c.ok] == ["containerd runs with the template's settings"]
    assert s10.plan(facts10(template=edited, containerd_toml=edited), s, sf.CONTROL).empty
    assert s10.plan(facts10(template=edited, containerd_toml=None), s, sf.CONTROL).empty  # not started yet


def test_registry_mirror_hosts_toml():
    s = Settings(registry_mirrors_csv=(("docker.io", "https://mirror.lab:5000"),))
    plan = s10.plan(facts10(), s, sf.CONTROL)
    puts = [a for a in plan.actions if isinstance(a, PutFile)]
    assert [p.path for p in puts] == ["/var/snap/microk8s/current/args/certs.d/docker.io/hosts.toml"]
    body = puts[0].content.decode()
    assert 'server = "https://registry-1.docker.io"' in body and '[host."https://mirror.lab:5000"]' in body
    done = facts10(mirrors="== docker.io\n" + body + "\n")
    assert s10.plan(done, s, sf.CONTROL).empty
    assert "certs.d/docker.io/hosts.toml" in s10.mirrors_probe(s).script


def test_mirror_registry_name_with_shell_metacharacters_is_refused():
    from provision.errors import ConfigError

    with pytest.raises(ConfigError):
        s10.mirrors_probe(Settings(registry_mirrors_csv=(("docker.io/$(reboot)", "https://m:5000"),)))


@pytest.mark.parametrize("value", [
    'docker.io=https://m.lab/"]\n[host."https://evil', 'docker.io=https://m.lab/"x', "docker.io=https://m.lab:5000 x", "docker.io=ftp://m.lab",
    "docker.io=https://user:pw@m.lab", "docker.io=https://m.lab?x=1", "docker.io=https://m.lab:70000",
    "docker.io=https://m.lab\\x", "docker.io=https://m.lab\x01", "docker.io=https://", "docker.io=m.lab",
    "docker.io/$(reboot)=https://m.lab", 'do"cker.io=https://m.lab', "docker.io:0x1=https://m.lab", "=https://m"])
def test_hostile_registry_mirrors_are_refused_by_config(value):
    from provision.config import load_settings
    from provision.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_settings(None, {"REGISTRY_MIRRORS_CSV": value})
    assert len(e.value.problems) == 1 and "REGISTRY_MIRRORS_CSV" in e.value.problems[0]
    assert "\n" not in e.value.problems[0] and "pw" not in e.value.problems[0]


def test_registry_mirrors_hosts_toml_parses_to_the_exact_values():
    import tomllib

    from provision.config import load_settings

    csv = "docker.io=https://mirror.lab.example:5000, localhost:32000=http://10.0.0.5:5000/v2/x_y~z%20"
    s = load_settings(None, {"REGISTRY_MIRRORS_CSV": csv})
    assert s.registry_mirrors_csv == (("docker.io", "https://mirror.lab.example:5000"),
                                      ("localhost:32000", "http://10.0.0.5:5000/v2/x_y~z%20"))
    plan = s10.plan(facts10(), s, sf.CONTROL)
    puts = {p.path.split("/")[-2]: tomllib.loads(p.content.decode()) for p in plan.actions if isinstance(p, PutFile)}
    assert puts == {"docker.io": {"server": "https://registry-1.docker.io", "host": {
                        "https://mirror.lab.example:5000": {"capabilities": ["pull", "resolve"]}}},
                    "localhost:32000": {"server": "https://localhost:32000", "host": {
                        "http://10.0.0.5:5000/v2/x_y~z%20": {"capabilities": ["pull", "resolve"]}}}}
    # the emitter alone, on what config would refuse: still one key with exactly that value
    hostile = 'https://m/"]\n[host."x\\y\x7f\t'
    assert tomllib.loads(s10.hosts_toml("docker.io", hostile))["host"] == {hostile: {"capabilities": ["pull", "resolve"]}}


def test_missing_readiness_image_is_imported():
    present = [r for r in s10.readiness_images(sf.manifest(), Settings()) if "calico/node" not in r]
    plan = s10.plan(facts10(images=present), Settings(), sf.CONTROL)
    assert kinds(plan) == ["ImportImages", "microk8s status --wait-ready"]
    assert plan.actions[0].refs == ("docker.io/calico/node:v3.25.1",)


# --------------------------------------------------------------------------------------------- stage 20


def facts20(images: list[str] | None, arch: str = "x86_64", digests: dict[str, str] | None = None):
    out = sf.ctr_ls(images or [])
    for ref, d in (digests or {}).items():
        out += f"{ref} application/vnd.oci.image.manifest.v1+json {d} 1 KiB linux/amd64 -\n"
    return sf.StrictFacts({
        "arch": F.parse_arch(sf.raw(arch + "\n")),
        "ctr_images": M.parse_ctr_images(sf.raw(out) if images is not None else sf.raw("", 127)),
        "bundle": sf.manifest(),
    })


def test_images_fresh_node_imports_per_tarball():
    plan = s20.plan(facts20(None), Settings(), sf.CONTROL)
    assert [a.file for a in plan.actions] == ["images/core.tar", "images/hub.tar"]
    assert plan.actions[0].sha256 == f"{0:064x}" and plan.actions[0].size == 1000


def test_images_gpu_node_also_gets_gpu_images():
    plan = s20.plan(facts20(None), Settings(), sf.GPU_WORKER)
    assert [a.file for a in plan.actions] == ["images/core.tar", "images/hub.tar", "images/gpu.tar"]


def test_images_converged_node_plans_nothing():
    refs = [i.ref for i in sf.manifest().images_for_roles({"control-plane"})]
    plan = s20.plan(facts20(refs), Settings(), sf.CONTROL)
    assert plan.empty and "present" in plan.noop_reason
    assert all(c.ok for c in s20.verify(facts20(refs), Settings(), sf.CONTROL))


def test_images_other_digest_is_reimported_only_that_tarball():
    refs = [i.ref for i in sf.manifest().images_for_roles({"control-plane"}) if i.ref != normalize_ref(sf.SINGLEUSER)]
    plan = s20.plan(facts20(refs, digests={normalize_ref(sf.SINGLEUSER): "sha256:" + "1" * 64}), Settings(),
                    sf.CONTROL)
    assert [(a.file, a.refs) for a in plan.actions] == [("images/hub.tar", (normalize_ref(sf.SINGLEUSER),))]


def test_images_wrong_arch_is_refused():
    with pytest.raises(ConflictError, match="no arm64 variant"):
        s20.plan(facts20(None, arch="aarch64"), Settings(), sf.CONTROL)


def test_image_actions_describe_without_reading_files():
    plan = s20.plan(facts20(None), Settings(), sf.CONTROL)
    line = plan.actions[0].describe()
    assert "images/core.tar" in line and "--platform amd64" in line and "more" in line


class _SlowContainerd:
    """`microk8s ctr version` fails `down` times (socket not there yet), then answers; records argv."""

    name = "cp1"

    def __init__(self, down: int):
        self.down, self.calls = down, []

    def run(self, argv, **kw):
        from provision.hosts.base import Result

        self.calls.append(list(argv))
        if argv[:3] == ["microk8s", "ctr", "version"] and self.down > 0:
            self.down -= 1
            return Result(tuple(argv), 1, "", 'ctr: failed to dial "/var/snap/microk8s/common/run/'
                                              'containerd.sock": context deadline exceeded\n')
        return Result(tuple(argv), 0, "", "")


def test_import_waits_for_containerd_after_a_restart(tmp_path):
    """The import is sent only once containerd answers (its socket comes seconds after a start)."""
    import threading

    from provision.errors import Interrupted, ProvisionError
    from provision.stage import ApplyContext

    (tmp_path / "images").mkdir()
    (tmp_path / "images/core.tar").write_bytes(b"x")
    ctx = ApplyContext(Settings(), tmp_path)
    action = M.ImportImages("images/core.tar", "0" * 64, 1, ("a:1",), "amd64", containerd_timeout=30)
    host = _SlowContainerd(down=2)
    host.is_local = True
    M.wait_containerd(host, ctx, 30, interval=0.01)
    host.down = 2
    host.calls.clear()
    action.apply(host, ctx)
    assert [c[:4] for c in host.calls] == [["microk8s", "ctr", "version"]] * 3 + [["microk8s", "ctr", "image", "import"]]

    with pytest.raises(ProvisionError, match=r"cp1: containerd did not answer within 0s \(ctr: failed to dial"):
        M.wait_containerd(_SlowContainerd(down=99), ctx, 0)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted):
        M.wait_containerd(_SlowContainerd(down=99), ApplyContext(Settings(), extra={"stop": stop}), 30)
    imports = s20.plan(facts20(None), Settings(wait_timeout=900), sf.CONTROL).actions
    assert imports and all(a.containerd_timeout == 900 for a in imports)


def test_wait_ready_looks_again_after_a_stale_ready():
    """After `microk8s start` the Node still carries its old Ready: status --wait-ready passes on it, then the
    kubelet posts NotReady. WaitReady looks again after settling and waits again instead of returning."""
    from provision.hosts.base import Result
    from provision.stage import ApplyContext
    from stages.s10_microk8s import WaitReady

    running = iter(["False", "True"])  # what `status --format yaml` says after each settle
    ran: list[str] = []

    class Node:
        name = "n1"

        def run(self, argv, **kw):
            ran.append(" ".join(argv[:3]))
            out = f"microk8s:\n  running: {next(running)}\n" if "--format" in argv else "microk8s is running\n"
            return Result(tuple(argv), 0, out, "")

    WaitReady(("microk8s", "status", "--wait-ready", "--timeout", "60"), "wait", timeout=60, settle=0.01) \
        .apply(Node(), ApplyContext(Settings()))
    assert ran == ["microk8s status --wait-ready", "microk8s status --format",
                   "microk8s status --wait-ready", "microk8s status --format"]
