"""`provision port-forward`: the unit as rendered, option checks (exit 2 before any node is touched), the
pure start/stop plans, gather from probe output, and the status line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from provision.commands import port_forward as P
from provision.commands.port_forward import UNIT, UNIT_PATH, UnitState, plan_start, plan_stop
from provision.errors import ConfigError
from tests.unit.fakes import FakeHost


def unit(address="127.0.0.1", port=8080, ns="jhub") -> str:
    return P.render_unit(ns, address, port)


def test_unit_keeps_kubectl_port_forward_running_and_restarts_it():
    text = unit("0.0.0.0", 8888, "lab-hub")
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    assert exec_start == ("ExecStart=/snap/bin/microk8s kubectl port-forward -n lab-hub svc/proxy-public "
                          "--address 0.0.0.0 8888:80")  # absolute: systemd never searches /snap/bin
    lines = text.splitlines()
    assert "Restart=always" in lines and "RestartSec=2" in lines
    assert "StartLimitIntervalSec=0" in lines  # the default start limit would give up while the hub is down
    assert "WantedBy=multi-user.target" in lines
    assert P.unit_url(text) == "http://0.0.0.0:8888/"
    assert P.unit_url(unit("::1", 9000)) == "http://[::1]:9000/"
    assert P.unit_url(None) is None


@pytest.mark.parametrize("value, want", [("127.0.0.1", "127.0.0.1"), (" 0.0.0.0", "0.0.0.0"), ("::1", "::1"),
                                         ("fd00:0::5", "fd00::5")])
def test_address_is_an_ip_literal(value, want):
    assert P.check_address(value) == want


@pytest.mark.parametrize("value", ["localhost", "10.0.0", "1.2.3.4; rm -rf /", "", "127.0.0.1 8080:80"])
def test_other_addresses_are_refused(value):
    with pytest.raises(ConfigError) as e:
        P.check_address(value)
    assert e.value.exit_code == 2 and "--address" in e.value.message


@pytest.mark.parametrize("value", ["0", "65536", "-1", "80x", "", "1e3"])
def test_ports_outside_1_65535_are_refused(value):
    with pytest.raises(ConfigError) as e:
        P.check_port(value)
    assert e.value.exit_code == 2 and "1-65535" in e.value.message


def test_bad_options_exit_2_with_one_line_before_settings_or_node(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "_control", lambda kw: pytest.fail("the node was contacted"))
    for args, word in ((["--address", "lab-node"], "--address"), (["--port", "70000"], "--port")):
        r = CliRunner().invoke(P.port_forward, ["start", "--env", str(tmp_path / "missing.env"), *args])
        assert r.exit_code == 2, r.output
        assert r.output.count("error:") == 1 and word in r.output


# --- plans (pure) ------------------------------------------------------------------------------------------


def argvs(steps):
    return [s.argv or ("write", UNIT_PATH) for s in steps]


def test_start_new_unit_writes_reloads_and_enables_now():
    steps = plan_start(UnitState(None, "inactive", "not-found"), unit())
    assert argvs(steps) == [("write", UNIT_PATH), ("systemctl", "daemon-reload"),
                            ("systemctl", "enable", "--now", UNIT)]
    assert steps[0].content == unit().encode()


def test_start_same_unit_running_changes_nothing():
    assert plan_start(UnitState(unit(), "active", "enabled"), unit()) == []
    assert plan_start(UnitState(unit(), "activating", "enabled"), unit()) == []  # between restarts


def test_start_changed_address_or_port_rewrites_and_restarts():
    steps = plan_start(UnitState(unit(port=8080), "active", "enabled"), unit(port=9090))
    assert argvs(steps) == [("write", UNIT_PATH), ("systemctl", "daemon-reload"), ("systemctl", "restart", UNIT)]
    steps = plan_start(UnitState(unit(), "active", "disabled"), unit("0.0.0.0"))
    assert ("systemctl", "enable", UNIT) in argvs(steps) and argvs(steps)[-1] == ("systemctl", "restart", UNIT)


def test_start_same_unit_stopped_or_failed_is_started_again():
    for active, enabled in (("inactive", "enabled"), ("failed", "enabled"), ("active", "disabled")):
        assert argvs(plan_start(UnitState(unit(), active, enabled), unit())) == [
            ("systemctl", "enable", "--now", UNIT)]


def test_stop_disables_removes_and_reloads_and_is_idempotent():
    assert argvs(plan_stop(UnitState(unit(), "active", "enabled"))) == [
        ("systemctl", "disable", "--now", UNIT), ("rm", "-f", UNIT_PATH), ("systemctl", "daemon-reload")]
    assert plan_stop(UnitState(None, "inactive", "not-found")) == []
    assert argvs(plan_stop(UnitState(None, "active", "not-found"))) == [("systemctl", "stop", UNIT)]


# --- gather and status -------------------------------------------------------------------------------------


def test_gather_reads_the_unit_and_its_state_in_one_round_trip():
    host = FakeHost("cp", probes={"unit": unit(), "active": ("activating", 3), "enabled": "enabled", "microk8s": "",
                                  "service": ("", 1)})
    state = P.gather(host, "jhub")
    # the file byte for byte: a re-start compares it
    assert state == UnitState(unit(), "activating", "enabled", microk8s=True, service=False)
    assert len(host.calls) == 1 and host.calls[0][1]  # one probe script, with sudo
    assert "kubectl get service -n jhub proxy-public" in host.calls[0][0][2]
    missing = P.gather(FakeHost("cp", probes={"unit": ("", 1), "active": ("inactive", 3), "enabled": ("", 1),
                                              "microk8s": ("", 1)}))
    assert missing == UnitState(None, "inactive", "not-found", microk8s=False, service=None)


def test_start_refuses_without_microk8s_before_any_change(tmp_path, monkeypatch):
    from contextlib import contextmanager
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "jhub.env.example"
    host = FakeHost("cp", probes={"unit": ("", 1), "active": ("inactive", 3), "enabled": ("", 1),
                                  "microk8s": ("", 1), "service": ("", 127)})

    @contextmanager
    def control(kw):
        class Inv:
            control = "cp"

            def host(self, name):
                return host
        yield Inv()

    monkeypatch.setattr(P, "_control", control)
    r = CliRunner().invoke(P.port_forward, ["start", "--env", str(example)])
    assert r.exit_code == 3 and "MicroK8s is not installed" in r.output and "provision install" in r.output
    assert len(host.calls) == 1  # the gather only: nothing written, nothing started


def test_status_lines_say_state_and_url():
    assert P.status_line(UnitState(unit(), "active", "enabled")) == \
        f"port-forward: active, http://127.0.0.1:8080/ ({UNIT}, enabled)"
    assert "keeps exiting" in P.status_line(UnitState(unit(), "activating", "enabled"))
    assert "journalctl -u" in P.status_line(UnitState(unit(), "activating", "enabled"))
    assert P.status_line(UnitState(None, "inactive", "not-found")).startswith("port-forward: not set up")
