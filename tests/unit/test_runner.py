"""The runner contract (k0sctl manager_test style): selection, dry run, apply, verify, failures, lock."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time

import pytest

from provision.config import Secret, Settings
from provision.console import Console, LogFile, Masker
from provision.errors import ConfigError, Interrupted, LockedError, ProvisionError, VerifyFailed
from provision.lock import RunLock
from provision.runner import Runner, RunOptions, parse_stage_list, select_stages
from provision.stage import Check, Node, Role, Scope
from tests.unit.fakes import FakeHost, fail, set_key
from tests.unit.stubs import KeyStage, StubPreflight


def nodes(*names):
    return [Node(n, f"10.0.0.{i + 11}", frozenset({Role.CONTROL} if i == 0 else {Role.WORKER}))
            for i, n in enumerate(names)]


def make(stages, names=("a", "b"), tmp_path=None, settings=None, confirm=None, lock=None, **opts):
    ns = nodes(*names)
    hosts = {n.name: FakeHost(n.name, n.address, commands={("set",): set_key, ("fail",): fail}) for n in ns}
    settings = settings or Settings()
    masker = Masker.from_settings(settings)
    stream = io.StringIO()
    log = LogFile(tmp_path / "run.log", masker) if tmp_path else None
    console = Console(log=log, masker=masker, stream=stream, tty=False)
    opts.setdefault("yes", True)
    runner = Runner(stages, ns, hosts, settings, RunOptions(**opts), console, lock=lock, confirm=confirm)
    return runner, hosts, stream


def run_expect(runner, exc=ProvisionError):
    with pytest.raises(exc) as e:
        runner.run()
    return e.value


# --- selection (pure) ----------------------------------------------------------------------------

ALL = [0, 10, 20, 30]


@pytest.mark.parametrize("opts, want", [
    (RunOptions(), [0, 10, 20, 30]),
    (RunOptions(from_stage=20), [0, 20, 30]),
    (RunOptions(to_stage=10), [0, 10]),
    (RunOptions(from_stage=10, to_stage=20), [0, 10, 20]),
    (RunOptions(only=(20,)), [0, 20]),
    (RunOptions(only=(0,)), [0]),
    (RunOptions(skip=(10, 30)), [0, 20]),
    (RunOptions(only=(20, 30), skip=(30,)), [0, 20]),
])
def test_select_stages(opts, want):
    assert select_stages(ALL, opts) == (want, [])


def test_skipping_preflight_warns():
    chosen, warnings = select_stages(ALL, RunOptions(skip=(0,), only=(20,)))
    assert chosen == [20]
    assert warnings == ["preflight skipped (--skip 00): the nodes are not checked before changes"]


@pytest.mark.parametrize("opts, message", [
    (RunOptions(only=(35,)), "no stage 35; the stages are 00, 10, 20, 30"),
    (RunOptions(only=(10,), from_stage=10), "--only cannot be combined with --from/--to"),
    (RunOptions(from_stage=30, to_stage=10), "--from 30 comes after --to 10"),
])
def test_select_stages_refuses(opts, message):
    with pytest.raises(ConfigError) as e:
        select_stages(ALL, opts)
    assert e.value.message == message and e.value.exit_code == 2


def test_parse_stage_list():
    assert parse_stage_list(("10,20", "30"), "--only") == (10, 20, 30)
    assert parse_stage_list("00", "--skip") == (0,)
    with pytest.raises(ConfigError, match="--only 'x1': expected a stage number"):
        parse_stage_list("x1", "--only")


# --- the run -------------------------------------------------------------------------------------


def test_apply_then_rerun_is_noop(tmp_path):
    stages = [StubPreflight(), KeyStage(10, {"snap": "1"}), KeyStage(20, {"img": "2"}, scope=Scope.CLUSTER)]
    runner, hosts, _ = make(stages, tmp_path=tmp_path)
    summary = runner.run()
    assert summary.ok and summary.actions_applied == 3  # a, b for stage 10; control node only for 20
    assert hosts["a"].world == {"snap": "1", "img": "2"} and hosts["b"].world == {"snap": "1"}
    assert [s.status for s in summary.stages] == ["unchanged", "changed", "changed"]
    assert summary.stages[2].nodes.keys() == {"a"}
    # the same stage objects against the converged hosts: zero changes
    runner2 = Runner(stages, runner.nodes, hosts, Settings(), RunOptions(yes=True), runner.console)
    again = runner2.run()
    assert again.actions_applied == 0 and {s.status for s in again.stages} == {"unchanged"}


def test_dry_run_executes_nothing_and_marks_conditional(tmp_path):
    stages = [StubPreflight(), KeyStage(10, {"snap": "1"}), KeyStage(20, {"img": "2"})]
    runner, hosts, stream = make(stages, tmp_path=tmp_path, dry_run=True, yes=False)
    summary = runner.run()
    assert all(h.world == {} for h in hosts.values())
    assert not any(argv[0] == "set" for h in hosts.values() for argv, _ in h.calls)
    s0, s10, s20 = summary.stages
    assert (s0.conditional, s10.conditional, s20.conditional) == (False, False, True)
    assert s10.status == "would change" and s20.status == "conditional"
    assert summary.actions_applied == 0 and summary.actions_planned == 4
    out = stream.getvalue()
    assert "==> [20] Stub 20  (conditional: earlier stages have changes not yet made)" in out
    assert "a:   + set snap=1" in out


def test_stage_that_applies_to_no_node_is_skipped(tmp_path):
    stages = [StubPreflight(), KeyStage(10, {"x": "1"}, nodes={"nobody"})]
    runner, _, stream = make(stages, tmp_path=tmp_path)
    summary = runner.run()
    assert (summary.stages[1].status, summary.stages[1].reason) == ("skipped", "no matching nodes")
    assert "skipped: no matching nodes" in stream.getvalue()


def test_unselected_stages_are_skipped_and_preflight_still_runs(tmp_path):
    pre, s10, s20 = StubPreflight(), KeyStage(10, {"x": "1"}), KeyStage(20, {"y": "1"})
    runner, _hosts, _ = make([pre, s10, s20], tmp_path=tmp_path, only=(20,))
    summary = runner.run()
    assert [s.status for s in summary.stages] == ["unchanged", "skipped", "changed"]
    assert summary.stages[1].reason == "not selected"
    assert pre.gathers == 2 and s10.gathers == 0


def test_skip_preflight_warns_and_does_not_run_it(tmp_path):
    pre = StubPreflight()
    runner, _, stream = make([pre, KeyStage(10, {"x": "1"})], tmp_path=tmp_path, skip=(0,))
    runner.run()
    assert pre.gathers == 0
    assert "warning: preflight skipped (--skip 00)" in stream.getvalue()


def test_preflight_failure_stops_before_any_change(tmp_path):
    stages = [StubPreflight(), KeyStage(10, {"snap": "1"})]
    runner, hosts, stream = make(stages, names=("a", "b", "c"), tmp_path=tmp_path)
    hosts["b"].world["bad"] = "yes"
    err = run_expect(runner)
    assert err.exit_code == 3
    assert err.message == ("stage 00 (Preflight checks) failed on 1 of 3 nodes:\n"
                           "  b: os: this is not Ubuntu — install Ubuntu")
    assert "nothing was changed" in err.hint
    assert all("snap" not in h.world for h in hosts.values())
    assert runner.summary.stages[1].status == "skipped" and runner.summary.stages[1].reason == "not reached"
    assert runner.summary.exit_code == 3 and not runner.summary.ok
    assert "b: FAIL  os: this is not Ubuntu — install Ubuntu" in stream.getvalue()


def test_apply_failure_other_nodes_finish_and_run_stops(tmp_path):
    s10 = KeyStage(10, {"snap": "1"})
    s20 = KeyStage(20, {"img": "1"})
    runner, hosts, _stream = make([StubPreflight(), s10, s20], names=("a", "b", "c"), tmp_path=tmp_path)
    hosts["b"].commands[("set",)] = lambda h, argv: fail(h, ("fail", "disk full"))
    hosts["c"].commands[("set",)] = lambda h, argv: fail(h, ("fail", "no route"))
    err = run_expect(runner)
    assert err.exit_code == 1
    assert err.message == ("stage 10 (Stub 10) failed on 2 of 3 nodes:\n"
                           "  b: `set snap 1` exited 1:\n  b:     disk full\n"
                           "  c: `set snap 1` exited 1:\n  c:     no route")
    assert hosts["a"].world == {"snap": "1"}  # the healthy node finished its stage
    assert s20.gathers == 0  # the run stopped after the failed stage
    s = runner.summary.stages
    assert s[1].nodes["a"].status == "changed" and s[1].nodes["b"].status == "failed"
    assert s[2].status == "skipped"


def test_non_converging_stage_raises_verify_failed(tmp_path):
    runner, _, _ = make([StubPreflight(), KeyStage(10, broken=True)], tmp_path=tmp_path)
    err = run_expect(runner)
    assert err.exit_code == VerifyFailed.exit_code == 5
    assert "did not converge: after applying, stage 10 still plans 1 action(s): set again=1" in err.message


def test_failed_check_after_apply_raises_verify_failed(tmp_path):
    stage = KeyStage(10, {"svc": "1"}, checks=lambda f, n: [Check("svc running", False, "svc is down", "restart it")])
    runner, hosts, _ = make([StubPreflight(), stage], names=("a",), tmp_path=tmp_path)
    err = run_expect(runner)
    assert err.exit_code == 5
    assert err.message == "stage 10 (Stub 10) failed on a:\n  a: svc running: svc is down — restart it"
    assert hosts["a"].world == {"svc": "1"}


def test_warning_checks_do_not_fail(tmp_path):
    stage = KeyStage(10, checks=lambda f, n: [Check("swap", False, "swap is on", "swapoff -a", warning=True)])
    runner, _, stream = make([stage], names=("a",), tmp_path=tmp_path)
    assert runner.run().ok
    assert "a: warn  swap: swap is on — swapoff -a" in stream.getvalue()


def test_gather_errors_are_collected_per_node(tmp_path):
    def boom(host, node):
        if node.name != "a":
            raise ProvisionError(f"{node.name}: cannot reach it", "check the cable")

    runner, _, _ = make([KeyStage(10, gather_hook=boom)], names=("a", "b", "c"), tmp_path=tmp_path)
    err = run_expect(runner)
    assert err.message == ("stage 10 (Stub 10) failed on 2 of 3 nodes:\n"
                           "  b: cannot reach it — check the cable\n  c: cannot reach it — check the cable")
    assert err.exit_code == 1


def test_a_bug_in_a_stage_is_reported_not_raised(tmp_path):
    def bug(host, node):
        raise KeyError("oops")

    runner, _, _ = make([KeyStage(10, gather_hook=bug)], names=("a",), tmp_path=tmp_path)
    err = run_expect(runner)
    assert "internal error: KeyError: 'oops' (traceback in the log)" in err.message
    assert "Traceback" in (tmp_path / "run.log").read_text()


def test_nodes_work_in_parallel(tmp_path):
    barrier = threading.Barrier(4, timeout=5)
    stage = KeyStage(10, gather_hook=lambda host, node: barrier.wait())
    runner, _, _ = make([stage], names=("a", "b", "c", "d"), tmp_path=tmp_path, concurrency=10)
    assert runner.run().ok  # all four gathers were in flight at once, or the barrier would break


def test_concurrency_bounds_parallel_work(tmp_path):
    active, peak, lock = [0], [0], threading.Lock()

    def hook(host, node):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1

    runner, _, _ = make([KeyStage(10, gather_hook=hook)], names=tuple("abcdef"), tmp_path=tmp_path, concurrency=2)
    runner.run()
    assert peak[0] == 2


# --- confirmation ----------------------------------------------------------------------------------


def test_no_terminal_and_no_yes_refuses_without_hanging(tmp_path):
    runner, hosts, _ = make([StubPreflight(), KeyStage(10, {"x": "1"})], tmp_path=tmp_path, yes=False,
                            interactive=False)
    err = run_expect(runner)
    assert err.exit_code == 2
    assert err.message == ("stage 10 (Stub 10) has 2 change(s) for 2 node(s), and there is no terminal to "
                           "confirm them")
    assert "--yes" in err.hint
    assert all(h.world == {} for h in hosts.values())


def test_declined_confirmation_changes_nothing(tmp_path):
    asked = []
    runner, hosts, _ = make([KeyStage(10, {"x": "1"})], tmp_path=tmp_path, yes=False, interactive=True,
                            confirm=lambda q: asked.append(q) or False)
    err = run_expect(runner, Interrupted)
    assert err.exit_code == 130
    assert asked == ["Apply stage 10 (Stub 10) has 2 change(s) for 2 node(s)? [y/N]"]
    assert all(h.world == {} for h in hosts.values())


def test_confirmed_changes_are_applied_and_noop_stages_do_not_ask(tmp_path):
    asked = []
    runner, _hosts, _ = make([StubPreflight(), KeyStage(10, {"x": "1"})], tmp_path=tmp_path, yes=False,
                            interactive=True, confirm=lambda q: asked.append(q) or True)
    assert runner.run().actions_applied == 2
    assert len(asked) == 1  # preflight had nothing to apply, so it did not ask


# --- lock, interrupt, secrets, json ------------------------------------------------------------------


def test_lock_refuses_a_second_run(tmp_path):
    path = tmp_path / "provision.lock"
    with RunLock(path):
        runner, hosts, _ = make([KeyStage(10, {"x": "1"})], tmp_path=tmp_path, lock=RunLock(path))
        err = run_expect(runner, LockedError)
        assert err.exit_code == 4
        assert err.message == f"another provision run is in progress (PID {os.getpid()})"
        assert all(h.world == {} for h in hosts.values())
        # a dry run changes nothing, so it does not need the lock
        dry, _, _ = make([KeyStage(10, {"x": "1"})], tmp_path=tmp_path, lock=RunLock(path), dry_run=True)
        assert dry.run().ok
    runner, _, _ = make([KeyStage(10, {"x": "1"})], tmp_path=tmp_path, lock=RunLock(path))
    assert runner.run().ok  # released when the holder is done
    assert path.read_text() == ""


def test_ctrl_c_lets_running_commands_end_and_starts_nothing_new(tmp_path):
    done = []

    def slow_set(host, argv):
        if argv[1] == "first":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while this command runs
            time.sleep(0.3)
        done.append(argv[1])
        return set_key(host, argv)

    stage = KeyStage(10, {"first": "1", "second": "1"})
    later = KeyStage(20, {"z": "1"})
    runner, hosts, stream = make([stage, later], names=("a",), tmp_path=tmp_path)
    hosts["a"].commands[("set",)] = slow_set
    err = run_expect(runner, Interrupted)
    assert err.exit_code == 130
    assert err.message == "interrupted during stage 10 (Stub 10)"
    assert "--from 10" in err.hint
    assert done == ["first"]  # a fake host cannot be interrupted: its command finished; the next never started
    assert later.gathers == 0
    assert "stopping the commands running on the nodes" in stream.getvalue()


def test_ctrl_c_ends_a_long_command_and_its_children_within_2s(tmp_path):
    """Ctrl-C while a LocalHost command (a shell with a child sleep) runs: the runner interrupts the host,
    every process of it ends, and run() raises Interrupted (exit 130) within 2 s."""
    from provision.hosts.local import LocalHost
    from provision.stage import Plan, RunCommand

    marker = tmp_path / "pid"

    class Long(KeyStage):
        def gather(self, host, settings, node):
            return {}

        def plan(self, facts, settings, node):
            return Plan.of(RunCommand(("sh", "-c", 'sleep 300 & echo $! > "$1"; wait', "sh", str(marker)),
                                      "long", sudo=False))

    console = Console(stream=io.StringIO(), tty=False)
    runner = Runner([Long(10)], [Node("local", "127.0.0.1")], {"local": LocalHost("local")}, Settings(),
                    RunOptions(yes=True), console)
    sent = []

    def ctrl_c_once_running():
        deadline = time.monotonic() + 10
        while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.01)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_running, daemon=True).start()
    err = run_expect(runner, Interrupted)
    took = time.monotonic() - sent[0]
    child = int(marker.read_text())
    assert err.exit_code == 130 and err.message == "interrupted during stage 10 (Stub 10)"
    assert took < 2, f"{took:.2f}s from Ctrl-C to the end of the run"
    deadline = time.monotonic() + 1
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(child), "the command's child process outlived the interrupt"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_secrets_never_reach_screen_or_log(tmp_path):
    from provision.hosts.local import LocalHost
    from provision.stage import Plan, RunCommand

    secret = "gh-s3cr3t-value-42"
    settings = Settings(github_client_secret=Secret(secret))

    class Leaky(KeyStage):
        def gather(self, host, settings, node):
            return {}

        def plan(self, facts, settings, node):
            # a command that prints the secret and fails: output, error and argv all carry it
            return Plan.of(RunCommand(("sh", "-c", 'echo "token=$1"; echo "bad $1" >&2; exit 3', "sh",
                                       settings.github_client_secret.reveal()), "leak test", sudo=False))

    node = Node("local", "127.0.0.1")
    masker = Masker.from_settings(settings)
    stream = io.StringIO()
    console = Console(log=LogFile(tmp_path / "run.log", masker), masker=masker, stream=stream, tty=False,
                      verbose=True)
    runner = Runner([Leaky(10)], [node], {"local": LocalHost("local")}, settings, RunOptions(yes=True), console)
    err = run_expect(runner)
    log = (tmp_path / "run.log").read_text()
    assert secret not in log and secret not in stream.getvalue() and secret not in err.message
    assert secret not in json.dumps(runner.summary.to_dict())
    assert "token=********" in log and "bad ********" in err.message
    assert oct((tmp_path / "run.log").stat().st_mode & 0o777) == "0o600"


def test_summary_json_shape(tmp_path):
    runner, _, _ = make([StubPreflight(), KeyStage(10, {"x": "1"})], names=("a",), tmp_path=tmp_path)
    data = json.loads(json.dumps(runner.run().to_dict()))
    assert data["actions_applied"] == 1 and data["ok"] is True and data["dry_run"] is False
    assert data["nodes"] == ["a"] and data["log_file"] == str(tmp_path / "run.log")
    s10 = data["stages"][1]
    assert s10["number"] == 10 and s10["status"] == "changed" and s10["actions_applied"] == 1
    assert s10["nodes"]["a"] == {"status": "changed", "planned": ["set x=1"], "actions_applied": 1,
                                 "reason": "changed (1 actions)", "error": None, "checks": []}


# --- roles found by preflight reach the later stages (defect 17) ------------------------------------------


def test_preflight_gpu_facts_make_stage_20_import_the_gpu_images(tmp_path):
    """The real preflight and stage 20 plan: a node whose nvidia-smi lists 8 GPUs gets the gpu role, and
    stage 20 plans the GPU tarball there (dry run), while a node without GPUs does not."""
    from stages.s00_preflight import Preflight
    from stages.s20_images import Images
    from tests.stages import stagefacts as sf
    from tests.unit.test_preflight import raw_probes

    h100 = "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\n" * 8
    images = Images()
    images._manifest.get = lambda stage: sf.manifest()  # the fixture manifest instead of a bundle dir
    ns = [Node("cp1", "10.0.0.11", frozenset({Role.CONTROL})), Node("cp2", "10.0.0.12", frozenset({Role.CONTROL}))]
    hosts = {}
    for n in ns:
        probes = {**raw_probes(), "ctr_images": ("", 127),
                  "hostname": f"{n.name}\n---\n{n.address}       STREAM {n.name}\n---\n{n.address} \n"}
        if n.name == "cp1":
            probes.update(nvidia_pci="0x030200\n" * 8, nvidia_smi=h100)
        hosts[n.name] = FakeHost(n.name, n.address, probes=probes)
    stream = io.StringIO()
    console = Console(masker=Masker(), stream=stream, tty=False)
    runner = Runner([Preflight(), images], ns, hosts, Settings(), RunOptions(dry_run=True), console)
    summary = runner.run()
    planned = {name: rec.planned for name, rec in summary.stages[1].nodes.items()}
    assert any("images/gpu.tar" in line and sf.GPU_IMAGE in line for line in planned["cp1"]), planned
    assert not any("images/gpu.tar" in line for line in planned["cp2"]), planned
    out = stream.getvalue()
    assert "roles: control-plane, gpu (8 GPUs found)" in out and "roles: control-plane\n" in out
    assert [n.roles for n in runner.nodes] == [frozenset({Role.CONTROL, Role.GPU}), frozenset({Role.CONTROL})]


def test_warnings_reach_the_table_the_closing_line_and_the_json():
    """A stage's warning checks (e.g. stage 70's old-chart warning) are not lost in the summary."""
    from provision.runner import closing_line, summary_rows

    def warn(facts, node):
        return [Check("chart", False, "chart 4.2.0 predates the security fixes", "use 4.4.0", warning=True)]

    runner, _hosts, stream = make([StubPreflight(), KeyStage(10, {"k": "v"}, checks=warn)], names=("a",))
    summary = runner.run()
    assert "a: warn  chart: chart 4.2.0 predates the security fixes" in stream.getvalue()
    _headers, rows = summary_rows(summary)
    assert rows[1][1] == "changed (1), 1 warning"
    assert closing_line(summary).endswith("1 action(s) applied; 1 warning(s), see the `warn` lines above")
    data = summary.to_dict()
    assert data["warnings"] == 1
    (check,) = data["stages"][1]["nodes"]["a"]["checks"]
    assert check["warning"] is True and "4.2.0" in check["detail"]


def test_cluster_stages_see_every_node_with_preflights_roles():
    """A cluster stage runs on the control node only; its context carries the run's nodes with the roles
    preflight found (stage 50 labels the NPU nodes from them)."""
    class Roles(StubPreflight):
        def roles(self, facts, node):
            return (node.roles | {Role.NPU} if node.name == "b" else node.roles), "roles"

    seen = []

    class Cluster(KeyStage):
        def gather(self, host, settings, node):
            seen.append(self.context.nodes)
            return super().gather(host, settings, node)

    runner, _, _ = make([Roles(), Cluster(50, scope=Scope.CLUSTER)])
    runner.run()
    assert seen and [(n.name, Role.NPU in n.roles) for n in seen[0]] == [("a", False), ("b", True)]
