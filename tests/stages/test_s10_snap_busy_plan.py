"""Stage 10 with a snapd change left in progress by a killed run: the plan waits for it (`snap watch <id>`)
and never starts a second install; with no change in progress nothing is waited for.

The `snap changes` outputs below are in snapd's real layout (cmd/snap cmd_changes.go: a tabwriter table,
minwidth 5, padding 2, `ID  Status  Spawn  Ready  Summary`, human times with spaces, Ready `-` while the
change runs; summary of a file install from daemon/api_sideload_n_try.go: `Install "NAME" snap from file
"PATH"`)."""

from __future__ import annotations

import pytest

from provision.config import Settings
from provision.errors import CommandFailed, ProvisionError
from provision.hosts.base import Result
from stages import _snapd as S
from stages import s10_microk8s as s10
from tests.stages import stagefacts as sf
from tests.stages.test_s10_s20_plan import facts10, kinds

MK_FILE = "/var/lib/provision/snaps/microk8s_7394.snap"
CORE_FILE = "/var/lib/provision/snaps/core20_2264.snap"

CHANGES_MK_DOING = (
    "ID   Status  Spawn               Ready  Summary\n"
    f'6    Doing   today at 10:03 UTC  -      Install "microk8s" snap from file "{MK_FILE}"\n'
    "\n")
CHANGES_CORE_DONE = (
    "ID   Status  Spawn               Ready               Summary\n"
    f'5    Done    today at 10:02 UTC  today at 10:02 UTC  Install "core20" snap from file "{CORE_FILE}"\n'
    "\n")
CHANGES_CORE_DOING_ABS = (  # `--abs-time` style times, and an earlier failed try
    "ID   Status  Spawn                 Ready                 Summary\n"
    f'3    Error   2026-05-20T10:01:07Z  2026-05-20T10:01:09Z  Install "core20" snap from file "{CORE_FILE}"\n'
    f'4    Doing   2026-05-20T10:02:11Z  -                     Install "core20" snap from file "{CORE_FILE}"\n'
    "\n")
CHANGES_MK_REFRESH = (
    "ID   Status  Spawn               Ready  Summary\n"
    '9    Doing   today at 11:40 UTC  -      Refresh "microk8s" snap\n'
    "\n")
CHANGES_ALL = (  # plain `snap changes`: one tabwriter block, so every column is as wide as its widest cell
    "ID   Status  Spawn               Ready               Summary\n"
    f'5    Done    today at 10:02 UTC  today at 10:02 UTC  Install "core20" snap from file "{CORE_FILE}"\n'
    f'6    Doing   today at 10:03 UTC  -                   Install "microk8s" snap from file "{MK_FILE}"\n'
    "\n")
NONE = "no changes found\n"
OLD_NONE = "error: no changes found\n"

SNAP_LIST_CORE_ONLY = """Name    Version   Rev    Tracking       Publisher   Notes
core20  20240227  2264   -              canonical✓  base
snapd   2.63      21759  latest/stable  canonical✓  snapd
"""


def probe_out(core20: str = NONE, microk8s: str = NONE) -> str:
    return f"== core20\n{core20}== microk8s\n{microk8s}"


def test_parser_reads_the_real_table_with_spaced_times():
    rows = S.parse_changes_table(CHANGES_ALL, "microk8s")
    assert [(r.id, r.status, r.spawn, r.ready) for r in rows] == [
        ("5", "Done", "today at 10:02 UTC", "today at 10:02 UTC"),
        ("6", "Doing", "today at 10:03 UTC", "-")]
    assert rows[1].summary == f'Install "microk8s" snap from file "{MK_FILE}"'
    assert [r.in_progress for r in rows] == [False, True] and rows[1].installs
    assert S.parse_changes_table(NONE) == S.parse_changes_table(OLD_NONE) == []


def test_probe_parser_keeps_only_changes_in_progress():
    facts = S.parse_snap_changes(sf.raw(probe_out(CHANGES_CORE_DOING_ABS, CHANGES_MK_DOING)))
    assert facts["available"]
    assert [(c.id, c.snap, c.status) for c in facts["in_progress"]] == [("4", "core20", "Doing"),
                                                                        ("6", "microk8s", "Doing")]
    idle = S.parse_snap_changes(sf.raw(probe_out(CHANGES_CORE_DONE, OLD_NONE)))
    assert idle == {"available": True, "in_progress": []}
    assert S.parse_snap_changes(sf.raw("", 127)) == {"available": False, "in_progress": []}


def test_probe_script_quotes_snap_names_and_asks_snapd_once_per_snap():
    script = S.changes_probe(("core20", "micro k8s")).script
    assert "snap changes core20 2>&1" in script and "snap changes 'micro k8s' 2>&1" in script


def test_install_in_progress_is_waited_for_not_started_again():
    """Killed during `snap install microk8s`: the re-run waits for change 6 first, sends and installs nothing
    of microk8s again, then holds, configures and waits for readiness as usual."""
    f = facts10(SNAP_LIST_CORE_ONLY, status=None, template=None,
                snap_changes=probe_out(CHANGES_CORE_DONE, CHANGES_MK_DOING))
    plan = s10.plan(f, Settings(wait_timeout=300), sf.CONTROL)
    k = kinds(plan)
    assert k[0] == "WaitSnapChange"
    wait = plan.actions[0]
    assert (wait.change_id, wait.timeout) == ("6", 300)
    assert "snapd change 6" in wait.describe() and "microk8s" in wait.describe()
    assert not [x for x in k if x.startswith(("snap install", "snap ack"))] and "SendSnap" not in k
    assert k[1:3] == ["snap refresh --hold", "ConfigureContainerd"]
    assert k[-1] == "microk8s status --wait-ready"


def test_base_install_in_progress_is_waited_for_then_microk8s_installed():
    f = facts10(sf.SNAP_LIST_FRESH, status=None, template=None, snap_changes=probe_out(CHANGES_CORE_DOING_ABS))
    k = kinds(s10.plan(f, Settings(), sf.CONTROL))
    assert k[0] == "WaitSnapChange"
    assert [x for x in k if x.startswith("snap install")] == ["snap install /var/lib/provision/snaps/microk8s_7394.snap"]


def test_refresh_in_progress_on_an_installed_node_is_waited_for():
    f = facts10(snap_changes=probe_out(microk8s=CHANGES_MK_REFRESH))
    assert kinds(s10.plan(f, Settings(), sf.CONTROL)) == ["WaitSnapChange", "microk8s status --wait-ready"]


def test_nothing_in_progress_waits_for_nothing():
    idle = probe_out(CHANGES_CORE_DONE, NONE)
    assert s10.plan(facts10(snap_changes=idle), Settings(), sf.CONTROL).empty
    fresh = kinds(s10.plan(facts10(sf.SNAP_LIST_FRESH, status=None, template=None, snap_changes=idle),
                           Settings(), sf.CONTROL))
    assert "WaitSnapChange" not in fresh and fresh.count("SendSnap") == 2


class _Host:
    """Answers `snap watch` with one scripted result and records the argv and timeout."""

    name = "cp1"

    def __init__(self, rc: int, stderr: str = ""):
        self.rc, self.stderr, self.calls = rc, stderr, []

    def run(self, argv, *, sudo=False, stdin=None, timeout=None, check=True):
        self.calls.append((tuple(argv), sudo, timeout))
        return Result(tuple(argv), self.rc, "", self.stderr)


def test_wait_action_is_bounded_and_names_the_change():
    wait = S.WaitSnapChange("6", f'Install "microk8s" snap from file "{MK_FILE}"', 300)
    ok = _Host(0)
    wait.apply(ok, None)
    assert ok.calls == [(("timeout", "300", "snap", "watch", "6"), True, 360)]
    with pytest.raises(ProvisionError, match=r"cp1: snapd change 6 \(Install \"microk8s\".*still in progress after "
                                             r"300s") as e:
        wait.apply(_Host(124), None)
    assert "snap watch 6" in e.value.hint and "snap abort 6" in e.value.hint
    err = "error: cannot perform the following tasks:\n- Run install hook of \"microk8s\" snap if present\n"
    with pytest.raises(CommandFailed, match="exited 1") as e:
        wait.apply(_Host(1, err), None)
    assert "install hook" in str(e.value) and "snap tasks 6" in e.value.hint


def test_unseeded_host_waits_for_seeding_before_the_first_install():
    """A freshly booted host refuses snap installs until snapd has seeded ("too early for operation, device not
    yet seeded ..."); stage 10 waits with `snap wait system seed.loaded` first -- only when it installs or
    refreshes something."""
    fresh = s10.plan(facts10(sf.SNAP_LIST_FRESH, status=None, template=None, seeded=False), Settings(), sf.CONTROL)
    assert kinds(fresh)[:2] == ["WaitSeeded", "SendSnap"]
    assert "WaitSeeded" not in kinds(s10.plan(facts10(sf.SNAP_LIST_FRESH, status=None, template=None), Settings(),
                                               sf.CONTROL))
    assert s10.plan(facts10(seeded=False), Settings(), sf.CONTROL).empty   # installed and held: nothing to wait for
    assert S.parse_seeded(sf.raw("", 124)) is False and S.parse_seeded(sf.raw("", 0)) is True
    assert S.seeded_probe in s10.probes(Settings())


def test_seed_wait_is_bounded_and_explains_a_timeout():
    wait = S.WaitSeeded(300)
    ok = _Host(0)
    wait.apply(ok, None)
    assert ok.calls == [(("timeout", "300", "snap", "wait", "system", "seed.loaded"), True, 360)]
    with pytest.raises(ProvisionError, match=r"cp1: snapd has not finished seeding after 300s") as e:
        wait.apply(_Host(124), None)
    assert "snap wait system seed.loaded" in e.value.hint
