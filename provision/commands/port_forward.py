"""`provision port-forward start|stop|status`: a systemd unit on the control node that keeps
`microk8s kubectl port-forward` to the hub's proxy running (the bash tool's `jhub-portforward`).

kubectl port-forward exits whenever its connection or the proxy pod goes away; systemd restarts it
(Restart=always, no start limit), so the hub stays reachable on ADDRESS:PORT of the control node without
a NodePort or Nginx. gather (one round trip) → plan (pure list of steps) → apply, like a stage.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from provision.commands.options import env_option
from provision.inventory import host_options

UNIT = "provision-port-forward.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
TEMPLATE = "systemd/provision-port-forward.service.j2"
_EXEC = re.compile(r"^ExecStart=.* --address (\S+) (\d+):80\s*$", re.MULTILINE)


def check_address(value: str) -> str:
    """--address: an IPv4 or IPv6 literal (kubectl binds it; a name would be resolved on every restart)."""
    from provision.errors import ConfigError

    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConfigError(f"--address {value!r} is not an IP address",
                          "give an address of the control node, e.g. --address 127.0.0.1 or --address 0.0.0.0 "
                          "(every interface)") from None


def check_port(value: str) -> int:
    from provision.errors import ConfigError

    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"--port {value!r} is not a TCP port (1-65535)", "e.g. --port 8080")
    return int(text)


def render_unit(namespace: str, address: str, port: int) -> str:
    from provision.jupyterhub.access import PROXY_SERVICE, http_url
    from provision.render import render_template

    return render_template("provision.jupyterhub", TEMPLATE, namespace=namespace, service=PROXY_SERVICE,
                           address=address, port=port, url=http_url(address, port))


def unit_url(text: str | None) -> str | None:
    """The URL a written unit serves (from its ExecStart), or None."""
    from provision.jupyterhub.access import http_url

    m = _EXEC.search(text or "")
    return http_url(m.group(1), int(m.group(2))) if m else None


# ---------------------------------------------------------------------------------------------
# gather (read-only, one round trip) and plan (pure)


@dataclass(frozen=True)
class UnitState:
    text: str | None  # the unit file on the node, None when absent
    active: str       # systemctl is-active: active | activating (between restarts) | inactive | failed
    enabled: str      # systemctl is-enabled: enabled | disabled | not-found
    microk8s: bool = True       # /snap/bin/microk8s is there (what ExecStart runs)
    service: bool | None = None  # svc/proxy-public exists in the namespace (start only; None: not asked)

    @property
    def running(self) -> bool:
        return self.active in ("active", "activating", "reloading")


@dataclass(frozen=True)
class Step:
    """One change on the node: a systemctl/rm argv, or the unit file's new content."""

    describe: str
    argv: tuple[str, ...] = ()
    content: bytes | None = None


def gather(host: Any, namespace: str | None = None) -> UnitState:
    """The unit file, its state, MicroK8s; with a namespace also whether the hub's proxy Service exists."""
    from provision import facts as F
    from provision.jupyterhub.access import PROXY_SERVICE

    def word(raw: F.Raw) -> str:
        return (raw.out.strip().splitlines() or [""])[0]

    probes = [
        F.Probe("unit", F.quoted("cat {p}", p=UNIT_PATH), lambda r: r.out if r.ok else None),
        F.Probe("active", F.quoted("timeout 30 systemctl is-active {u}", u=UNIT), word),
        F.Probe("enabled", F.quoted("timeout 30 systemctl is-enabled {u}", u=UNIT), word),
        F.Probe("microk8s", "test -x /snap/bin/microk8s", lambda r: r.ok),
    ]
    if namespace is not None:
        probes.append(F.Probe("service", F.quoted("timeout 30 /snap/bin/microk8s kubectl get service -n {ns} {svc} "
                                                  "-o name", ns=namespace, svc=PROXY_SERVICE), lambda r: r.ok))
    got = F.gather(host, probes, sudo=True)
    return UnitState(got["unit"], got["active"] or "inactive", got["enabled"] or "not-found", got["microk8s"],
                     got.get("service"))


def plan_start(state: UnitState, wanted: str) -> list[Step]:
    """New unit: write, daemon-reload, enable --now. Changed (address/port/namespace): write, daemon-reload,
    restart. Same unit, stopped or disabled: enable --now. Same unit running: nothing."""
    enable_now = Step(f"systemctl enable --now {UNIT}", ("systemctl", "enable", "--now", UNIT))
    if state.text == wanted:
        return [] if state.running and state.enabled == "enabled" else [enable_now]
    steps = [Step(f"write {UNIT_PATH} (0644)", content=wanted.encode()),
             Step("systemctl daemon-reload", ("systemctl", "daemon-reload"))]
    if state.text is None or not state.running:
        return [*steps, enable_now]
    if state.enabled != "enabled":
        steps.append(Step(f"systemctl enable {UNIT}", ("systemctl", "enable", UNIT)))
    return [*steps, Step(f"systemctl restart {UNIT}", ("systemctl", "restart", UNIT))]


def plan_stop(state: UnitState) -> list[Step]:
    """disable --now and remove the unit; a unit still running without its file (removed by hand) is stopped."""
    steps = []
    if state.text is not None:
        steps.append(Step(f"systemctl disable --now {UNIT}", ("systemctl", "disable", "--now", UNIT)))
    elif state.running:
        steps.append(Step(f"systemctl stop {UNIT}", ("systemctl", "stop", UNIT)))
    if state.text is not None:
        steps += [Step(f"remove {UNIT_PATH}", ("rm", "-f", UNIT_PATH)),
                  Step("systemctl daemon-reload", ("systemctl", "daemon-reload"))]
    return steps


def apply(host: Any, steps: Sequence[Step]) -> None:
    for step in steps:
        click.echo(f"{host.name}: {step.describe}", err=True)
        if step.content is not None:
            host.put_bytes(step.content, UNIT_PATH, mode=0o644, sudo=True)
        else:
            host.run(list(step.argv), sudo=True, timeout=120)


def status_line(state: UnitState) -> str:
    url = unit_url(state.text)
    if state.text is None:
        return "port-forward: not set up" + (f" (but {UNIT} is {state.active})" if state.running else "") + \
            "; start it with `provision port-forward start`"
    if state.active == "active":
        return f"port-forward: active, {url} ({UNIT}, {state.enabled})"
    if state.active == "activating":
        return (f"port-forward: restarting, {url}: kubectl port-forward keeps exiting (is the hub up?); "
                f"see `journalctl -u {UNIT} -n 20`")
    return f"port-forward: {state.active}, {url} ({UNIT}, {state.enabled}); start it with `provision port-forward start`"


# ---------------------------------------------------------------------------------------------
# the commands


def _control(host_kwargs: dict[str, Any]):
    from provision.inventory import open_inventory

    return open_inventory(**host_kwargs)


def _fail(e: Exception) -> None:
    from provision.cli import report_error

    report_error(e)  # type: ignore[arg-type]
    sys.exit(e.exit_code)  # type: ignore[attr-defined]


@click.group("port-forward")
def port_forward() -> None:
    """Keep `microk8s kubectl port-forward` to the hub running on the control node (a systemd unit that
    restarts it whenever it exits), for a hub reachable without the NodePort or Nginx.

    \b
    Examples:
      sudo provision port-forward start                         # http://127.0.0.1:8080/ on this node
      sudo provision port-forward start --address 0.0.0.0 --port 8888
      provision port-forward status --host ubuntu@10.0.0.5
      sudo provision port-forward stop
    From another machine: ssh -L 8080:127.0.0.1:8080 USER@CONTROL-NODE, then open http://127.0.0.1:8080/.
    """


@port_forward.command()
@env_option
@host_options
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address of the control node to listen on (0.0.0.0: every interface).")
@click.option("--port", default="8080", show_default=True, help="Port to listen on.")
def start(env: str, address: str, port: str, **host_kwargs: Any) -> None:
    """Write and start the unit (HUB_NAMESPACE from --env); a second start with the same address and port
    changes nothing, another address or port rewrites the unit and restarts it."""
    from provision.errors import ProvisionError

    try:
        addr, num = check_address(address), check_port(port)  # exit 2 before anything is touched
        from provision.config import load_settings

        namespace = load_settings(env).hub_namespace
        wanted = render_unit(namespace, addr, num)
        with _control(host_kwargs) as inv:
            host = inv.host(inv.control)
            before = gather(host, namespace)
            if not before.microk8s:
                from provision.errors import PreflightError

                raise PreflightError(f"{host.name}: MicroK8s is not installed (no /snap/bin/microk8s), so there is "
                                     "no hub to forward to", "run `provision install` first (or pass --host "
                                     "USER@CONTROL-NODE), then start the port-forward")
            steps = plan_start(before, wanted)
            apply(host, steps)
            state = gather(host)
    except ProvisionError as e:
        _fail(e)
    if before.service is False:
        click.echo(f"warning: no service {namespace}/proxy-public yet (JupyterHub not installed?): the port-forward "
                   "retries every 2 s until stage 70 has run", err=True)
    click.echo(status_line(state) + ("" if steps else "; nothing changed"))


@port_forward.command()
@host_options
def stop(**host_kwargs: Any) -> None:
    """Stop the port-forward, disable it and remove its unit."""
    from provision.errors import ProvisionError

    try:
        with _control(host_kwargs) as inv:
            host = inv.host(inv.control)
            steps = plan_stop(gather(host))
            apply(host, steps)
    except ProvisionError as e:
        _fail(e)
    click.echo("port-forward: stopped and removed" if steps else "port-forward: not set up; nothing changed")


@port_forward.command()
@host_options
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON on stdout.")
def status(as_json: bool, **host_kwargs: Any) -> None:
    """Whether the port-forward runs, and its URL. Exit 0 when active, 3 when not."""
    from provision.errors import ProvisionError

    try:
        with _control(host_kwargs) as inv:
            state = gather(inv.host(inv.control))
    except ProvisionError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps({"unit": UNIT, "installed": state.text is not None, "active": state.active,
                               "enabled": state.enabled, "url": unit_url(state.text)}, indent=2))
    else:
        click.echo(status_line(state))
    sys.exit(0 if state.active == "active" else 3)
