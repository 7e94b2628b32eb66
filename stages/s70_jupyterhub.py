"""Stage 70: JupyterHub from the bundled Zero to JupyterHub chart, with values built as data.

gather: the bundled chart (defaults + schema), the release (`helm3 list`), a digest of its deployed values
(computed on the node, so no secret ever enters facts or logs), hub/proxy readiness, the nodes' GPU
capacity, for native accounts whether the first admin exists, and the volumes an earlier `provision uninstall`
kept (stages/_data.py: they become static PVs bound to their old claims before the release, so the hub finds
its database and users their homes). plan: nothing when chart version and
values match and the hub is up; else upgrade --install (values file 0600, removed after), wait for hub
and proxy with the failing pod named, and sign the first admin up.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from provision import facts as F
from provision.errors import ConflictError, ProvisionError, VerifyFailed
from provision.jupyterhub import RELEASE
from provision.stage import Action, ApplyContext, Check, Facts, Node, Notes, Plan, Scope, Stage
from stages import _data as D
from stages import _helm as H
from stages._helm import DIGEST_PY, HelmRelease, parse_digest, parse_json
from stages._microk8s import KubectlApply, kube_get, mk, pause_between_polls, pod_problem, pod_ready
from stages._microk8s import to_yaml as to_yaml_docs

COMPONENTS = ("hub", "proxy")

def admin_source() -> str:
    return resources.files("provision.jupyterhub.hub").joinpath("admin.py").read_text("utf-8")


# ---------------------------------------------------------------------------------------------
# Fact parsers (pure)


def parse_release(raw: F.Raw, release: str = RELEASE) -> dict[str, Any] | None | str:
    """Stage 70's release in `helm3 list -o json` (see stages/_helm.parse_release)."""
    return H.parse_release(raw, release)


def component_of(obj: Mapping[str, Any]) -> str:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return str(labels.get("component") or labels.get("app.kubernetes.io/component") or "")


def deployment_ready(dep: Mapping[str, Any] | None) -> bool:
    if not dep:
        return False
    st, meta, spec = dep.get("status") or {}, dep.get("metadata") or {}, dep.get("spec") or {}
    want = spec.get("replicas", 1)
    return (st.get("observedGeneration", 0) >= meta.get("generation", 0)
            and st.get("updatedReplicas", 0) >= want and st.get("readyReplicas", 0) >= want
            and st.get("replicas", 0) == want)


def readiness(deployments: Any, pods: Any) -> dict[str, dict[str, Any]]:
    """{'hub': {'ready': bool, 'pod': name, 'problem': text}, 'proxy': {...}} from the two lists."""
    deps = {d["metadata"]["name"]: d for d in (deployments or {}).get("items") or []}
    live = [p for p in (pods or {}).get("items") or [] if not (p.get("metadata") or {}).get("deletionTimestamp")]
    out = {}
    for comp in COMPONENTS:
        mine = [p for p in live if component_of(p) == comp]
        bad = next((p for p in mine if not pod_ready(p)), None)
        pod = bad or (mine[0] if mine else None)
        out[comp] = {"ready": deployment_ready(deps.get(comp)) and bad is None and bool(mine),
                     "pod": (pod or {}).get("metadata", {}).get("name", ""),
                     "problem": pod_problem(pod) if pod else ("no pod" if comp in deps else "no deployment")}
    return out


def max_gpus(nodes: Any) -> int | None:
    items = (nodes or {}).get("items")
    if items is None:
        return None
    counts = [int(str(((n.get("status") or {}).get("capacity") or {}).get("nvidia.com/gpu", 0)) or 0)
              for n in items]
    return max(counts, default=0)


def node_addresses(nodes: Any) -> list[str]:
    """Each node's InternalIP from `kubectl get nodes -o json`: where the NodePort answers."""
    out = []
    for n in (nodes or {}).get("items") or []:
        for a in (n.get("status") or {}).get("addresses") or []:
            if a.get("type") == "InternalIP" and a.get("address"):
                out.append(str(a["address"]))
                break
    return out


def control_address(nodes: Any, hostname: str, address: str) -> str | None:
    """The control node's InternalIP (where pods reach the usage portal): the Kubernetes node named like the
    machine (MicroK8s registers the lower-case hostname) or holding the inventory address; the only node
    of a one-node cluster."""
    items = (nodes or {}).get("items") or []
    named = [n for n in items if (n.get("metadata") or {}).get("name") == hostname.strip().lower()]
    if named:
        return next(iter(node_addresses({"items": named})), None)
    if address in node_addresses(nodes):
        return address
    return next(iter(node_addresses(nodes)), None) if len(items) == 1 else None


def parse_admin(raw: F.Raw) -> dict[str, bool] | None:
    data = parse_json(raw)
    return data if isinstance(data, dict) and "exists" in data else None


# ---------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class WaitHub(Action):
    """Wait for the hub and proxy Deployments; on timeout name the pod, its status and its last events."""

    waits_only = True

    namespace: str
    timeout: float
    interval: float = 3.0

    def describe(self) -> str:
        return f"wait up to {self.timeout:.0f}s for the hub and proxy pods in {self.namespace}"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        deadline = time.monotonic() + self.timeout
        state: dict[str, dict[str, Any]] = {}
        while True:
            deps, pods = kube_get(host, "deployments", "-n", self.namespace), \
                kube_get(host, "pods", "-n", self.namespace)
            if deps is not None and pods is not None:
                state = readiness(deps, pods)
                if all(s["ready"] for s in state.values()):
                    return
            if time.monotonic() >= deadline:
                break
            pause_between_polls(ctx, min(self.interval, max(0.0, deadline - time.monotonic())),
                                "the hub and proxy")
        if not state:
            raise VerifyFailed(f"the Kubernetes API did not answer for {self.timeout:.0f}s",
                               "check `microk8s status`, then re-run")
        lines = []
        for comp, s in state.items():
            if s["ready"]:
                continue
            events = self._events(host, s["pod"]) if s["pod"] else []
            lines.append(f"{comp} pod {s['pod'] or '(none)'}: {s['problem']}"
                         + (f"; last events: {' | '.join(events)}" if events else ""))
        raise VerifyFailed(f"JupyterHub not ready after {self.timeout:.0f}s: " + "; ".join(lines),
                           f"see `microk8s kubectl -n {self.namespace} describe pod <name>` and `microk8s kubectl "
                           f"-n {self.namespace} logs deploy/hub`; ErrImagePull/ImagePullBackOff means an image is missing "
                           "on that node: re-run stage 20 (`provision install --only 20`) and check the bundle "
                           "(`provision bundle verify`); raise WAIT_TIMEOUT on slow nodes; then re-run")

    def _events(self, host: Any, pod: str) -> list[str]:
        ev = kube_get(host, "events", "-n", self.namespace, "--field-selector", f"involvedObject.name={pod}")
        items = sorted((ev or {}).get("items") or [],
                       key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return [f"{e.get('reason', '')}: {' '.join(str(e.get('message', '')).split())[:200]}" for e in items[-3:]]


@dataclass(frozen=True)
class BootstrapAdmin(Action):
    """Sign the first admin up inside the hub pod (auto-approved as an admin) and prove the login works."""

    namespace: str
    username: str
    min_length: int = 8

    def describe(self) -> str:
        return f"create the first admin account {self.username!r} (NativeAuthenticator sign-up, in the hub pod)"

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        # The gather may not have been able to look (hub down, e.g. before this run's upgrade): look again
        # now that the hub is up, so an existing admin is left alone instead of failing a second sign-up.
        probe = host.run(list(mk("kubectl", "exec", "-n", self.namespace, "deploy/hub", "-c", "hub", "--",
                                  "python3", "-c", admin_source(), "probe", self.username)),
                         sudo=True, timeout=120, check=False)
        state = parse_admin(F.Raw(probe.stdout, probe.exit_status))
        if state and state.get("exists"):
            if callable(ctx.progress):
                ctx.progress(f"admin account {self.username!r} already exists; left as it is")
            return
        configured = ctx.settings.native_admin_password.reveal()
        password = configured or secrets.token_urlsafe(max(12, self.min_length))
        try:
            r = host.run(list(mk("kubectl", "exec", "-i", "-n", self.namespace, "deploy/hub", "-c", "hub", "--",
                                  "python3", "-c", admin_source(), "signup")),
                         sudo=True, stdin=json.dumps({"username": self.username, "password": password}).encode(),
                         timeout=120, check=False)
        except BaseException:  # link lost or Ctrl-C mid sign-up: the account may exist with this password
            if not configured:
                self._show(ctx, password, "may have been created")
            raise
        out = parse_admin_result(r.stdout)
        # A generated password is shown as soon as the account may exist, before the login proof can fail.
        if not configured and (out.get("created") or not out):
            self._show(ctx, password, "created" if out.get("created") else "may have been created")
        if out.get("login"):
            return
        why = out.get("message") or (r.stderr.strip().splitlines() or ["no output"])[-1]
        if out.get("created"):
            where = "NATIVE_ADMIN_PASSWORD" if configured else "the password shown above"
            raise ProvisionError(f"created the first admin {self.username!r}, but signing in with it failed: {why}",
                                 f"the account exists: sign in at /hub/login with {where}, then re-run "
                                 "`provision install --only 70` (it leaves the account as it is)")
        if not out and not configured:
            raise ProvisionError(f"could not tell whether the first admin {self.username!r} was created: {why}",
                                 "if /hub/login accepts the password shown above, it was; re-run `provision "
                                 "install --only 70` either way (an existing account is left as it is)")
        raise ProvisionError(f"could not create the first admin {self.username!r}: {why}",
                             "if the account exists with another password, reset it at "
                             "/hub/change-password/<user> as another admin, or set NATIVE_ADMIN_PASSWORD "
                             "to its password; then re-run")

    def _show(self, ctx: ApplyContext, password: str, what: str) -> None:
        """The generated password, once, on the terminal only (the log and the summary never see it)."""
        show = ctx.extra.get("show_secret_once")
        text = (f"First admin account {self.username!r} {what} with password: {password}\n"
                "  It is shown only this once (never logged). Change it at /hub/change-password.")
        if callable(show):
            show(text)
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()


def parse_admin_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return {}


# ---------------------------------------------------------------------------------------------
# The stage


class JupyterHubStage(Stage):
    """Release JupyterHub from the bundled chart with values built from jhub.env; wait; first admin."""

    number = 70
    title = "JupyterHub"
    scope = Scope.CLUSTER

    def probes(self, settings: Any) -> list[F.Probe]:
        ns = settings.hub_namespace
        q = F.quoted
        pre = "command -v microk8s >/dev/null 2>&1 || exit 127\n"
        probes = [
            F.Probe("release", pre + q("timeout 60 microk8s helm3 list -n {ns} --all -o json", ns=ns), parse_release),
            F.Probe("deployed_digest", pre + q("timeout 60 microk8s helm3 get values {r} -n {ns} -o json 2>/dev/null"
                                               " | python3 -c {py}", r=RELEASE, ns=ns, py=DIGEST_PY), parse_digest),
            F.Probe("deployments", pre + q("timeout 60 microk8s kubectl get deployments -n {ns} -o json", ns=ns),
                    parse_json),
            F.Probe("pods", pre + q("timeout 60 microk8s kubectl get pods -n {ns} -o json", ns=ns), parse_json),
            F.Probe("nodes", pre + "timeout 60 microk8s kubectl get nodes -o json", parse_json),
            F.Probe("hostname", "timeout 60 hostname", lambda r: r.out.strip() if r.ok else ""),
            # volumes an earlier `provision uninstall` kept (stages/_data.py): static PVs for them first
            F.Probe("kept", pre + q("[ -f {f} ] || exit 0\ncat {f}; echo; echo ---\n"
                                    "timeout 60 microk8s kubectl get pv -o json", f=D.KEPT_RECORD), D.parse_kept),
        ]
        if settings.auth_mode == "native" and settings.admin_users_csv:
            probes.append(F.Probe("admin", pre + q(
                "timeout 60 microk8s kubectl exec -n {ns} deploy/hub -c hub -- python3 -c {src} probe {user}",
                ns=ns, src=admin_source(), user=settings.admin_users_csv[0]), parse_admin))
        return probes

    def gather(self, host: Any, settings: Any, node: Node) -> Facts:
        from provision.jupyterhub.chart import check_jupyterhub_chart, find_chart, open_chart
        from provision.jupyterhub.values import default_templates_dir, load_branding

        bundle = getattr(getattr(self, "context", None), "bundle_dir", None)
        if bundle is None:
            from provision.errors import BundleError

            raise BundleError("no offline bundle given", "pass --bundle DIR (the offline-images directory)")
        chart = check_jupyterhub_chart(open_chart(find_chart(bundle, "jupyterhub", settings.z2jh_chart_version)))
        raw = F.gather(host, self.probes(settings), sudo=True)
        facts = {k: raw[k] for k in ("release", "deployed_digest")}
        facts["hub"] = readiness(raw["deployments"], raw["pods"])
        facts["max_gpus"] = max_gpus(raw["nodes"])
        facts["node_addresses"] = node_addresses(raw["nodes"])
        facts["control_address"] = control_address(raw["nodes"], raw["hostname"], node.address)
        facts["admin"] = raw.get("admin")
        facts["kept_pvs"] = D.missing_kept_pvs(raw.get("kept"), settings.hub_namespace)
        facts["chart"] = chart
        facts["branding"] = load_branding(default_templates_dir())
        return facts

    def plan(self, facts: Facts, settings: Any, node: Node) -> Plan:
        from provision.jupyterhub.values import release_values, to_yaml, values_digest

        chart = facts["chart"]
        ns = settings.hub_namespace
        rendered = release_values(settings, cluster_facts(facts), chart, facts["branding"])
        digest = values_digest(rendered.values)
        release = facts["release"]
        if release == "error":
            raise ProvisionError("`microk8s helm3 list` failed on the control node",
                                 "check `microk8s status` and that stages 10-40 completed, then re-run")
        actions: list[Action] = []
        if facts.get("kept_pvs"):  # before the release creates hub-db-dir: it binds to the old database
            n = len(facts["kept_pvs"])
            actions.append(KubectlApply(to_yaml_docs(*facts["kept_pvs"]), f"{n} PersistentVolume(s) for the hub "
                                        f"database and homes `provision uninstall` kept in {D.KEPT_DIR}"))
        why = ""
        if release is not None:
            if release["chart_name"] and release["chart_name"] != "jupyterhub":
                raise ConflictError(f"release {RELEASE} in {ns} is chart {release['chart_name']}, not jupyterhub",
                                    f"it is not ours: remove it (`microk8s helm3 uninstall {RELEASE} -n {ns}`) "
                                    "or set HUB_NAMESPACE to another namespace")
            if release["status"].startswith("pending"):
                fix = (f"microk8s helm3 uninstall {RELEASE} -n {ns}" if release["status"] == "pending-install"
                       else f"microk8s helm3 rollback {RELEASE} -n {ns}")
                raise ConflictError(f"release {RELEASE} is stuck in {release['status']} (an earlier helm run was "
                                    "interrupted or timed out)", f"run `{fix}`, then re-run provision")
        if release is None:
            why = "not installed"
        elif release["chart_version"].lstrip("v") != chart.version.lstrip("v"):
            why = f"chart {release['chart_version']} -> {chart.version}"
        elif facts["deployed_digest"] != digest:
            why = "values changed"
        elif release["status"] != "deployed":
            why = f"release is {release['status']}"
        if why:
            actions.append(HelmRelease(RELEASE, ns, chart.path, chart.version,
                                       to_yaml(rendered.values, show_secrets=True, quote_all=True).encode(), digest,
                                       int(settings.wait_timeout)))
        hub = facts["hub"]
        if actions or not all(h["ready"] for h in hub.values()):
            actions.append(WaitHub(ns, float(settings.wait_timeout)))
        if settings.auth_mode == "native" and settings.admin_users_csv:
            admin = facts.get("admin")
            if not (admin and admin.get("exists")):
                actions.append(BootstrapAdmin(ns, settings.admin_users_csv[0], settings.native_min_password_length))
        if not actions:
            return Plan.noop(f"release {RELEASE} at chart {chart.version} with these values; hub and proxy ready")
        return Plan.of(*actions)

    def verify(self, facts: Facts, settings: Any, node: Node) -> Sequence[Check]:
        release = facts.get("release")
        ok = isinstance(release, dict) and release.get("status") == "deployed"
        checks = [Check("helm release", ok, f"{RELEASE}: " + (f"{release['status']}, chart {release['chart_version']}"
                                                              if isinstance(release, dict) else "missing"),
                        f"microk8s helm3 status {RELEASE} -n {settings.hub_namespace}")]
        for comp, h in (facts.get("hub") or {}).items():
            checks.append(Check(f"{comp} ready", h["ready"], h["pod"] + ("" if h["ready"] else f": {h['problem']}"),
                                f"microk8s kubectl -n {settings.hub_namespace} describe pod {h['pod']}"))
        if settings.auth_mode == "native" and settings.admin_users_csv:
            admin = facts.get("admin") or {}
            checks.append(Check("first admin", bool(admin.get("exists") and admin.get("authorized")),
                                f"{settings.admin_users_csv[0]}: " + ("ready" if admin.get("exists") else "missing"),
                                "re-run provision install --only 70"))
        return checks + [Check(name, False, w, warning=True) for name, w in release_warnings(facts, settings)]


    def notes(self, facts_by_node: Mapping[str, Facts], settings: Any, nodes: Sequence[Node]) -> Notes:
        """Where users reach the hub (printed at the end of the run): every node's InternalIP as Kubernetes
        lists it, else the inventory's addresses."""
        from provision.jupyterhub.access import access_notes

        listed = [a for f in facts_by_node.values() for a in f.get("node_addresses") or ()]
        return access_notes(settings, listed or [n.address for n in nodes if not _loopback(n.address)])


def _loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def cluster_facts(facts: Facts) -> Any:
    from provision.jupyterhub.values import ClusterFacts

    return ClusterFacts(max_gpus=facts.get("max_gpus"), control_address=facts.get("control_address"))


def release_warnings(facts: Facts, settings: Any) -> list[tuple[str, str]]:
    """("chart" | "values", text): what the chart check and the values builder warn about (an old chart, a
    GPU count unknown ...), for the stage output and the run summary."""
    from provision.jupyterhub.values import build_values

    chart = facts.get("chart")
    if chart is None:
        return []
    built = build_values(settings, cluster_facts(facts), chart_defaults=chart.values,
                         branding=facts.get("branding"))
    return [("chart", w) for w in chart.warnings] + [("values", w) for w in built.warnings]
