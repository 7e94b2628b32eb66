"""`provision usage`: the usage portal (`serve`, what stage 75's systemd unit runs), `report` (CPU/memory/GPU/NPU
hours and cost per user or group from the portal's database) and `quota` (per user, group or default limits).

The domain is provision/jupyterhub/portal/ (store, accounting, collector, app); serve.py builds the portal's
settings and runs it. `report` and `quota` open the same database directly (USAGE_DB_URL, else the SQLite file
under /var/lib/provision), so they work with the portal stopped.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import click

from provision.commands.options import env_option

FORMATS = ("table", "csv", "json")
NUMBERS = ("cpu_core_hours", "memory_gib_hours", "gpu_hours", "npu_hours", "cost")


def _run(work) -> Any:
    from provision.cli import exit_with
    from provision.errors import ProvisionError

    try:
        return work()
    except ProvisionError as e:
        exit_with(e)


@click.group()
def usage() -> None:
    """The usage portal: sessions, CPU/memory/GPU/NPU hours and cost per user and group, quotas.

    \b
    Examples:
      sudo provision usage serve --env jhub.env                  # the portal (stage 75 runs it as a service)
      sudo provision usage report --by user                      # this period's usage and cost per user
      sudo provision usage report --from 2026-11-01 --to 2026-11-30 --by group --format csv > nov.csv
      sudo provision usage quota set --user alice --gpu 2 --gpu-hours 100
      sudo provision usage quota list
    """


# ---------------------------------------------------------------------------------------------
# serve


@usage.command()
@env_option
@click.option("--listen", metavar="ADDR:PORT",
              help="Address and port to serve on [default: 0.0.0.0:USAGE_PORTAL_PORT].")
@click.option("--token-file", default=None, metavar="FILE", type=click.Path(dir_okay=False),
              help="The API token's file (0600), read when USAGE_PORTAL_TOKEN is empty "
                   "[default: /etc/provision/usage-portal.token].")
@click.option("--kubeconfig", default=None, metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="Kubeconfig of the cluster to record [default: MicroK8s' own, "
                   "/var/snap/microk8s/current/credentials/client.config].")
def serve(env: str, listen: str | None, token_file: str | None, kubeconfig: str | None) -> None:
    """Run the usage portal in the foreground until SIGTERM or Ctrl-C (exit 0).

    Records every user server of HUB_NAMESPACE from the Kubernetes API every USAGE_COLLECT_INTERVAL (through
    MicroK8s' kubeconfig on the control node), serves the API (`Authorization: Bearer TOKEN`) and, signed in
    through JupyterHub, the admin dashboard and each user's "my usage" page. Data: USAGE_DB_URL (PostgreSQL),
    else SQLite in /var/lib/provision/usage.db. Without a reachable cluster it still serves, with the collector
    off (said once, and on /healthz), and starts recording when the cluster answers.

    With ENABLE_USAGE_PORTAL=true, `provision install` (stage 75) runs this as the systemd service
    provision-usage-portal; run it by hand to try it, or beside the cluster.

    \b
    Examples:
      sudo provision usage serve --env jhub.env
      sudo provision usage serve --env /etc/provision/usage-portal.env --listen 127.0.0.1:29781
      curl -s http://127.0.0.1:29781/healthz
      curl -s -H "Authorization: Bearer $(sudo cat /etc/provision/usage-portal.token)" \\
           http://127.0.0.1:29781/users/alice/limits

    Exit codes: 0 stopped cleanly, 1 the database cannot be opened or the port is taken,
    2 bad settings, --listen or token file.
    """
    def work() -> int:
        from provision.config import load_settings
        from provision.jupyterhub.portal.serve import TOKEN_FILE, PortalConfig
        from provision.jupyterhub.portal.serve import serve as run_portal

        settings = load_settings(env)
        cfg = PortalConfig.from_settings(settings, listen=listen, token_file=token_file or TOKEN_FILE,
                                         kubeconfig=kubeconfig)
        return run_portal(cfg)

    _run(work)


# ---------------------------------------------------------------------------------------------
# report


def parse_when(value: str, option: str, *, end_of_day: bool = False) -> datetime:
    """An ISO 8601 date or date-time as UTC (naive = UTC). A bare date as --to means the end of that day."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = datetime.combine(date.fromisoformat(text), time.min, timezone.utc)
            return d + timedelta(days=1) if end_of_day else d
        t = datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", text))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date or time (e.g. 2026-11-01 or "
                                 "2026-11-01T08:00:00Z)", click.get_current_context(silent=True),
                                 param_hint=option) from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def num(v: float) -> str:
    """4 -> "4.0", 0.123456 -> "0.1235": at most four decimals, at least one."""
    text = f"{float(v):.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d") if t.time() == time.min else t.strftime("%Y-%m-%dT%H:%M:%SZ")


@usage.command()
@env_option
@click.option("--from", "from_", metavar="DATE", help="Start (ISO 8601 date or time, UTC) [default: the start of "
              "this USAGE_QUOTA_PERIOD].")
@click.option("--to", "to", metavar="DATE", help="End; a date counts in whole [default: the end of this period].")
@click.option("--by", type=click.Choice(("user", "group")), default="user", show_default=True,
              help="One row per user, or per group (a user in no group counts under \"(none)\").")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="A table with totals, CSV, or JSON (a list of rows) on stdout.")
def report(env: str, from_: str | None, to: str | None, by: str, fmt: str) -> None:
    """CPU-core-hours, memory GiB-hours, GPU-hours, NPU-hours and cost per user or group over a period.

    Usage is what each server requested times how long it ran inside the period (OpenCost's rule); cost uses
    the USAGE_RATE_* settings (in USAGE_CURRENCY). Reads the portal's database directly (USAGE_DB_URL, else
    /var/lib/provision/usage.db, root only), so the portal need not run. Times are UTC.

    \b
    Examples:
      sudo provision usage report                                  # this month (USAGE_QUOTA_PERIOD), per user
      sudo provision usage report --from 2026-11-01 --to 2026-11-30 --by group
      sudo provision usage report --from 2026-11-01 --format csv > november.csv
      sudo provision usage report --format json | jq '.[] | select(.gpu_hours > 10)'

    Exit codes: 0 printed, 1 the database cannot be read, 2 bad settings or options.
    """
    def work() -> None:
        from provision.config import load_settings
        from provision.jupyterhub.portal import accounting
        from provision.jupyterhub.portal.serve import db_url_of, open_store

        now = datetime.now(timezone.utc)
        start = parse_when(from_, "--from") if from_ else None
        end = parse_when(to, "--to", end_of_day=True) if to else None
        settings = load_settings(env)
        period_start, period_end = accounting.period_bounds(settings.usage_quota_period, now)
        start = start or (period_start if end is None or end > period_start else end - (period_end - period_start))
        end = end or (period_end if start < period_end else now)
        if end <= start:
            raise click.BadParameter(f"the period is empty: --to ({_stamp(end)}) is not after --from "
                                     f"({_stamp(start)})", click.get_current_context(silent=True), param_hint="--to")
        rates = accounting.Rates(cpu_core_hour=settings.usage_rate_cpu_core_hour,
                                 memory_gib_hour=settings.usage_rate_memory_gib_hour,
                                 gpu_hour=settings.usage_rate_gpu_hour, npu_hour=settings.usage_rate_npu_hour,
                                 currency=settings.usage_currency)
        store = open_store(db_url_of(settings), create=False)
        try:
            sessions = store.list_sessions(start=start, end=end)
            rows = accounting.usage_rows(sessions, start, end, by=by, groups_of=store.groups_of, rates=rates, now=now)
            totals = rows if by == "user" else accounting.usage_rows(sessions, start, end, by="user", rates=rates,
                                                                     now=now)
        finally:
            store.close()
        if fmt == "json":
            click.echo(json.dumps([{by: r[by], **{k: r[k] for k in NUMBERS}, "sessions": r["sessions"]} for r in rows],
                                  indent=2))
        elif fmt == "csv":
            click.echo(accounting.report_csv(rows, by), nl=False)
        else:
            _table(rows, totals, by, start, end, rates.currency)

    _run(work)


def _table(rows: list[dict], totals: list[dict], by: str, start: datetime, end: datetime, currency: str) -> None:
    from rich.console import Console
    from rich.table import Table

    cost = f"Cost ({currency})" if currency else "Cost"
    if start.time() == end.time() == time.min:  # whole days: the last one shown inclusive, as --to takes it
        span = f"{_stamp(start)} to {_stamp(end - timedelta(days=1))} (UTC)"
    else:
        span = f"{_stamp(start)} to {_stamp(end)} (UTC, end excluded)"
    table = Table(title=f"Usage by {by}, {span}", title_justify="left")
    table.add_column(by.capitalize())
    for head in ("CPU core-h", "Memory GiB-h", "GPU-h", "NPU-h", cost, "Sessions"):
        table.add_column(head, justify="right")
    for r in rows:
        table.add_row(str(r[by]), *(num(r[k]) for k in NUMBERS), str(r["sessions"]))
    table.add_section()
    total = {k: sum(r[k] for r in totals) for k in NUMBERS}
    label = "Total"
    if by == "group":
        table.caption = "Total: each session once"
    table.add_row(label, *(num(total[k]) for k in NUMBERS), str(sum(r["sessions"] for r in totals)),
                  style="bold")
    if not rows:
        table.caption = "no sessions ran in this period"
    Console(soft_wrap=False, width=max(Console().width, 160)).print(table)


# ---------------------------------------------------------------------------------------------
# quota


def _scope(user: str | None, group: str | None, default: bool) -> tuple[str, str]:
    given = [x for x in (user and "--user", group and "--group", default and "--default") if x]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --user NAME, --group NAME or --default")
    return ("user", user) if user else ("group", group) if group else ("default", "")


def _who(scope: str, name: str) -> str:
    return "the default quota" if scope == "default" else f"{scope} {name}'s quota"


def _scope_options(f):
    f = click.option("--default", "default", is_flag=True, help="The quota of everyone without their own or a "
                     "group's.")(f)
    f = click.option("--group", metavar="NAME", help="A group's quota (its members: JupyterHub's group of that "
                     "name, plus --members or the API; the most generous of a user's groups applies).")(f)
    f = click.option("--user", metavar="NAME", help="One user's quota (wins over their groups').")(f)
    return env_option(f)


QUOTA_FIELDS = (("cpu_cores", "CPU cores"), ("memory_gib", "Memory GiB"), ("gpu", "GPUs"), ("npu", "NPUs"),
                ("gpu_hours", "GPU-h/period"), ("npu_hours", "NPU-h/period"))


@usage.group()
def quota() -> None:
    """Limits per user, per group or by default: concurrent CPU cores, memory, GPUs, NPUs, and GPU/NPU-hours
    per USAGE_QUOTA_PERIOD. The hub reads them (ENABLE_USAGE_LIMIT_ENFORCER=true) to offer each user only the
    profiles that fit. Which applies: the user's own, else the most generous of their groups' per limit, else
    the default, else none.

    \b
    Examples:
      sudo provision usage quota set --user alice --gpu 2 --gpu-hours 100
      sudo provision usage quota set --group physics --gpu 4 --cpu 32 --memory 256 --members alice,bob
      sudo provision usage quota set --default --gpu 1
      sudo provision usage quota list
      sudo provision usage quota delete --user alice
    """


@quota.command("set")
@_scope_options
@click.option("--cpu", "cpu_cores", type=click.FloatRange(min=0), help="CPU cores at once (summed limits).")
@click.option("--memory", "memory_gib", type=click.FloatRange(min=0), help="Memory in GiB at once.")
@click.option("--gpu", type=click.IntRange(min=0), help="GPUs at once.")
@click.option("--npu", type=click.IntRange(min=0), help="NPUs at once.")
@click.option("--gpu-hours", type=click.FloatRange(min=0), help="GPU-hours per period.")
@click.option("--npu-hours", type=click.FloatRange(min=0), help="NPU-hours per period.")
@click.option("--members", metavar="USER,USER", help="With --group: its members, replacing the list kept "
              "in the portal (JupyterHub's group of the same name counts too: the portal reads the hub's groups).")
def quota_set(env: str, user: str | None, group: str | None, default: bool, members: str | None,
              **limits: Any) -> None:
    """Set (replace) a quota: the limits given; a limit not given is no limit.

    \b
    Examples:
      sudo provision usage quota set --user alice --gpu 2 --gpu-hours 100
      sudo provision usage quota set --group physics --gpu 4 --gpu-hours 500 --members alice,bob

    Exit codes: 0 set, 1 the database cannot be written, 2 bad settings or options.
    """
    scope, name = _scope(user, group, default)
    if members is not None and scope != "group":
        raise click.UsageError("--members goes with --group NAME")
    if all(v is None for v in limits.values()):
        raise click.UsageError("give at least one limit (--cpu, --memory, --gpu, --npu, --gpu-hours, --npu-hours); "
                               "`quota delete` removes a quota")

    def work() -> None:
        names = [m.strip() for m in (members or "").split(",") if m.strip()]
        with _store(env) as store:
            store.set_quota(scope, name, **limits)
            if members is not None:
                store.set_group_members(name, names)
        given = [(label, limits[k]) for k, label in QUOTA_FIELDS if limits[k] is not None]
        click.echo(f"set {_who(scope, name)}: "
                   + ", ".join(f"{label} {num(v) if isinstance(v, float) else v}" for label, v in given)
                   + (f"; members: {', '.join(names) or 'none'}" if members is not None else ""))

    _run(work)


@quota.command("list")
@env_option
@click.option("--json", "as_json", is_flag=True, help="Print the quotas as JSON.")
def quota_list(env: str, as_json: bool) -> None:
    """List every quota (empty cell: no limit).

    \b
    Examples:
      sudo provision usage quota list
      sudo provision usage quota list --json
    """
    def work() -> None:
        with _store(env) as store:
            quotas = store.list_quotas()
            groups = store.list_groups()
            own, hub = store.list_groups(source="portal"), store.list_groups(source="hub")
        for q in quotas:
            if q.get("scope") == "group":  # members: the portal's list and JupyterHub's group of that name
                q["members"] = groups.get(q["name"], [])
                q["hub_members"] = hub.get(q["name"], [])
        if as_json:
            click.echo(json.dumps(quotas, indent=2, default=str))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Quotas (empty: no limit)", title_justify="left")
        table.add_column("Scope")
        table.add_column("Name")
        for _, label in QUOTA_FIELDS:
            table.add_column(label, justify="right")
        table.add_column("Members")
        for q in quotas:
            table.add_row(q.get("scope", ""), q.get("name", "") or "-",
                          *("" if q.get(k) is None else num(q[k]) for k, _ in QUOTA_FIELDS),
                          _members_cell(own.get(q.get("name", ""), []), q.get("hub_members", []))
                          if q.get("scope") == "group" else "")
        if not quotas:
            table.caption = "no quotas: nobody is limited (set one with `provision usage quota set`)"
        Console(soft_wrap=False, width=max(Console().width, 160)).print(table)

    _run(work)


def _members_cell(own: list[str], hub: list[str]) -> str:
    """"alice, bob; hub: carol": the portal's own list, then JupyterHub's group of the same name."""
    parts = ([", ".join(own)] if own else []) + (["hub: " + ", ".join(hub)] if hub else [])
    return "; ".join(parts)


@quota.command("delete")
@_scope_options
def quota_delete(env: str, user: str | None, group: str | None, default: bool) -> None:
    """Delete a quota (the user's groups' or the default quota applies then).

    \b
    Examples:
      sudo provision usage quota delete --user alice
      sudo provision usage quota delete --default

    Exit codes: 0 deleted, 1 no such quota or the database cannot be written, 2 bad settings or options.
    """
    scope, name = _scope(user, group, default)

    def work() -> None:
        from provision.errors import ProvisionError

        with _store(env) as store:
            found = store.delete_quota(scope, name)
        if not found:
            raise ProvisionError(f"no {_who(scope, name)} to delete", "`provision usage quota list` shows them")
        click.echo(f"deleted {_who(scope, name)}")

    _run(work)


class _store:
    """The portal's database for a short command (a new SQLite file is refused: the portal has not run here)."""

    def __init__(self, env: str):
        self.env = env

    def __enter__(self):
        from provision.config import load_settings
        from provision.jupyterhub.portal.serve import db_url_of, open_store

        self.store = open_store(db_url_of(load_settings(self.env)), create=False)
        return self.store

    def __exit__(self, *exc) -> None:
        self.store.close()
