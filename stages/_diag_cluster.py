"""The cluster-wide checks of `provision diag` / stage 90: pure functions of the control node's facts (kubectl
JSON, helm list, stage 80's access probes, the installed certificate). Split from stages/_diag_checks.py (the
node checks and `all_checks`, which calls `cluster_checks`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from provision.stage import Check, Node
from stages import _microk8s as M
from stages._diag_checks import HUB_DB_CLAIM, INSPECT, USER_ANNOTATION, USER_LABEL, _items, _meta, _short


def check_dns(c: Mapping[str, Any], settings: Any) -> list[Check]:
    from stages._dns import PUBLIC_RESOLVERS
    from stages.s40_dns_storage import corefile_upstreams

    problems = M.not_ready_pods({"items": [p for p in _items(c.get("k_pods"))
                                           if _meta(p).get("namespace") == "kube-system"]}, None, "coredns-", False)
    out = [Check("coredns", not problems, "; ".join(problems) or "ready",
                 "`sudo microk8s kubectl -n kube-system describe pod -l k8s-app=kube-dns`")]
    cm = c.get("k_coredns")
    ups = corefile_upstreams(((cm or {}).get("data") or {}).get("Corefile", "")) if cm else None
    if not ups:
        out.append(Check("coredns upstream", False, "no CoreDNS Corefile with a `forward .` line",
                         "`provision install --only 40`", warning=True))
        return out
    public = [u for u in ups if u in PUBLIC_RESOLVERS and u not in (settings.dns_servers_csv or ())]
    out.append(Check("coredns upstream", not public, f"forwards to {' '.join(ups)}" + (
        f": {', '.join(public)} is a public resolver, unreachable in an air gap, so lookups of outside names hang"
        if public else ""), "set DNS_SERVERS_CSV to your site's DNS servers and run `provision install --only 40`"))
    return out


def check_storage(c: Mapping[str, Any], settings: Any) -> list[Check]:
    ns = settings.hub_namespace
    out = []
    default = [_meta(s)["name"] for s in _items(c.get("k_sc"))
               if (_meta(s).get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true"]
    if default:
        out.append(Check("storage class", True, f"default {', '.join(default)}"))
    elif not settings.hub_db_url:
        out.append(Check("storage class", False, "no default StorageClass: the hub's database claim and users' "
                         "claims have nothing to bind to", "`provision install --only 40` (hostpath-storage on a "
                         "single node)", warning=True))
    pvcs = {_meta(p)["name"]: p for p in _items(c.get("k_pvc")) if _meta(p).get("namespace") == ns}
    fix = f"`sudo microk8s kubectl -n {ns} describe pvc NAME`"
    wanted = ([HUB_DB_CLAIM] if not settings.hub_db_url else []) + \
        (["jhub-homes"] if settings.shared_storage_enabled else [])
    for name in wanted:
        p = pvcs.get(name)
        phase = ((p or {}).get("status") or {}).get("phase", "missing")
        if p is None and name == HUB_DB_CLAIM and not _release(c, "jhub"):
            continue  # no hub yet: the release check says so
        out.append(Check(f"pvc {name}", phase == "Bound", f"{ns}/{name} {phase}",
                         fix.replace("NAME", name) + ("; `provision install --only 40` makes it" if p is None else "")))
    failed = [f"{_meta(v)['name']} ({(v.get('status') or {}).get('message') or 'Failed'})" for v in _items(c.get("k_pv"))
              if (v.get("status") or {}).get("phase") == "Failed"]
    if failed:
        out.append(Check("persistent volumes", False, f"{len(failed)} volume(s) Failed: {_short(failed)}",
                         "`sudo microk8s kubectl describe pv NAME`; the data stays on disk (reclaim policy)",
                         warning=True))
    users = sorted(n for n in pvcs if n.startswith("claim-"))
    unbound = [f"{n} ({(pvcs[n].get('status') or {}).get('phase', '?')})" for n in users
               if (pvcs[n].get("status") or {}).get("phase") != "Bound"]
    if unbound:
        out.append(Check("user volumes", False, f"{len(unbound)} of {len(users)} user claims not bound: "
                         f"{_short(unbound)}", fix, warning=True))
    elif users:
        out.append(Check("user volumes", True, f"{len(users)} user claims bound"))
    return out


def _release(c: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in c.get("helm") or [] if isinstance(r, dict) and r.get("name") == name), None)


def check_helm(c: Mapping[str, Any], settings: Any) -> list[Check]:
    rels = c.get("helm")
    if rels is None:
        return [Check("helm releases", False, "`microk8s helm3 list -A` failed", INSPECT)]
    out = []
    stage = {"jhub": "70", "gpu-operator": "50", "network-operator": "50"}
    for r in rels:
        name, ns, st = r.get("name"), r.get("namespace"), str(r.get("status", ""))
        if st == "deployed":
            out.append(Check(f"helm {name}", True, f"{ns}/{name} deployed, {r.get('chart')}"))
        elif st.startswith("pending"):
            out.append(Check(f"helm {name}", False, f"{ns}/{name} is stuck in {st} (a helm run was interrupted)",
                             f"`sudo microk8s helm3 rollback {name} -n {ns}`, then `provision install --only "
                             f"{stage.get(name, '70')}`"))
        else:
            out.append(Check(f"helm {name}", False, f"{ns}/{name} is {st}",
                             f"`sudo microk8s helm3 history {name} -n {ns}`; `provision install --only "
                             f"{stage.get(name, '70')}`"))
    if _release(c, "jhub") is None:
        out.append(Check("helm jhub", False, "JupyterHub is not installed (no helm release jhub)",
                         "`provision install` (stage 70)"))
    if settings.use_gpu_operator:
        rc = {_meta(x).get("name"): x.get("handler") for x in _items(c.get("k_runtimeclass"))}
        out.append(Check("runtime class nvidia", rc.get("nvidia") == "nvidia",
                         f"RuntimeClass nvidia: handler {rc.get('nvidia') or 'missing'}",
                         "GPU servers cannot start without it: `provision install --only 50`"))
    return out


def check_hub(c: Mapping[str, Any], settings: Any) -> list[Check]:
    from stages.s70_jupyterhub import readiness

    ns = settings.hub_namespace
    pods = {"items": [p for p in _items(c.get("k_pods")) if _meta(p).get("namespace") == ns]}
    if _release(c, "jhub") is None:
        return []
    out = []
    for comp, s in readiness(c.get("k_deploy"), pods).items():
        out.append(Check(comp, s["ready"], f"{s['pod'] or comp}: " + ("ready" if s["ready"] else s["problem"]),
                         f"`sudo microk8s kubectl -n {ns} describe pod {s['pod'] or '-l component=' + comp}`; "
                         f"`sudo microk8s kubectl -n {ns} logs deploy/{comp}`; `provision install --only 70`"))
    running = 0
    for p in pods["items"]:
        meta = _meta(p)
        if (meta.get("labels") or {}).get("component") != USER_LABEL or meta.get("deletionTimestamp"):
            continue
        user = (meta.get("annotations") or {}).get(USER_ANNOTATION) or meta.get("name")
        if M.pod_ready(p):
            running += 1
            continue
        problem = M.pod_problem(p)
        # waiting for a free GPU, or still starting (ContainerCreating, PodInitializing): a warning; an error
        # state (image pull, crash, OOMKilled, a failed scheduler verdict on volumes...) fails
        waiting = problem.startswith("Pending") or problem.endswith(("ContainerCreating", "PodInitializing"))
        out.append(Check(f"user {user}", False, f"{ns}/{meta.get('name')}: {problem}",
                         f"`provision diag spawn {user}` explains why", warning=waiting))
    out.append(Check("user servers", True, f"{running} running"))
    return out


def check_access(c: Mapping[str, Any], settings: Any, control: Node) -> tuple[list[Check], dict[str, Check]]:
    """Stage 80's verify (hub Service, NodePort from the control node to every node): cluster checks, and a
    'nodeport' check per Kubernetes node name."""
    from stages.s80_access import AccessStage

    if c.get("service") is None and _release(c, "jhub") is None:
        return [], {}
    per_node: dict[str, Check] = {}
    out = []
    for ch in AccessStage().verify(c, settings, control):
        if ch.name.startswith("nodeport "):
            per_node[ch.name.removeprefix("nodeport ")] = Check("nodeport", ch.ok, ch.detail, ch.hint, ch.warning)
        else:
            out.append(ch)
    return out, per_node


def check_nginx(c: Mapping[str, Any], settings: Any, now: float) -> list[Check]:
    from stages.s80_access import SITE, SITE_LINK

    if not settings.enable_nginx_proxy:
        return []
    ng = c.get("nginx") or {}
    fix = "`provision install --only 80`"
    if not ng.get("present"):
        return [Check("nginx", False, "nginx is not installed on the control node (ENABLE_NGINX_PROXY=true)",
                      "install it from your offline mirror (`apt install nginx`), then " + fix)]
    out = []
    if not (ng.get("files") or {}).get(SITE) or ng.get("link") != SITE:
        out.append(Check("nginx site", False, f"{SITE} missing or not enabled in {SITE_LINK}", fix))
    test = c.get("nginx_test") or {}
    if test.get("rc"):
        said = " / ".join(ln.strip() for ln in str(test.get("out", "")).splitlines() if "emerg" in ln or "failed" in ln)
        out.append(Check("nginx -t", False, said[-300:] or f"exit {test.get('rc')}",
                         "fix what nginx names (`sudo nginx -t`), then `sudo systemctl reload nginx`"))
    if ng.get("active") != "active":
        out.append(Check("nginx running", False, f"nginx is {ng.get('active') or 'not running'}",
                         "`sudo systemctl start nginx`; `sudo journalctl -u nginx`"))
    if not out:
        out.append(Check("nginx", True, f"site enabled, `nginx -t` ok, {ng.get('active')}"))
    return out + check_certificate(c.get("cert_pem"), now)


def check_certificate(pem: Any, now: float) -> list[Check]:
    """The certificate Nginx serves (the installed file): expired fails, within 30 days (stages/_tls.WARN_DAYS)
    warns."""
    from stages._tls import WARN_DAYS
    from stages.s80_access import CERT

    renew = ("renew or replace the certificate (the file NGINX_PROXY_CERT_FILE names), then re-run "
             "`provision install --only 80`")
    if not pem or pem.get("rc"):
        return [Check("tls certificate", False, f"{CERT} is missing", renew)]
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(str(pem["out"]).encode())
    except (ValueError, ImportError):
        return [Check("tls certificate", False, f"{CERT} is not a PEM certificate", renew)]
    from stages._tls import _utc

    end, start = _utc(cert, "not_valid_after"), _utc(cert, "not_valid_before")
    day = datetime.datetime.fromtimestamp(end, datetime.timezone.utc).strftime("%Y-%m-%d")
    if end <= now:
        return [Check("tls certificate", False, f"{CERT} expired on {day}: browsers refuse the hub", renew)]
    if start > now:
        return [Check("tls certificate", False, f"{CERT} is not valid before "
                      f"{datetime.datetime.fromtimestamp(start, datetime.timezone.utc):%Y-%m-%d}",
                      "check the control node's clock, or use a certificate valid now")]
    days = int((end - now) // 86400)
    if days < WARN_DAYS:
        return [Check("tls certificate", False, f"{CERT} expires in {days} day(s), on {day}", renew, warning=True)]
    return [Check("tls certificate", True, f"valid until {day} ({days} days)")]


def check_firewall(c: Mapping[str, Any], settings: Any) -> list[Check]:
    from stages.s80_access import open_ports

    want = open_ports(settings)
    ufw, fwd = c.get("ufw") or {}, c.get("firewalld") or {}
    fix = "`provision install --only 80` opens exactly these ports"
    out = []
    if ufw.get("active"):
        miss = [p for p in want if p not in ufw.get("allowed", [])]
        out.append(Check("firewall", not miss, f"ufw active, {'missing ' + ', '.join(miss) if miss else 'allows ' + ', '.join(want)}", fix))
    if fwd.get("running"):
        miss = [p for p in want if p not in fwd.get("permanent", []) or p not in fwd.get("runtime", [])]
        out.append(Check("firewall", not miss, f"firewalld running, {'missing ' + ', '.join(miss) if miss else 'allows ' + ', '.join(want)}", fix))
    if not out:
        seen = [f"{n} inactive" for n, f in (("ufw", ufw), ("firewalld", fwd)) if f.get("present")]
        out.append(Check("firewall", True, f"{', '.join(seen) or 'no ufw or firewalld'}: no rules needed"))
    return out


def check_usage_portal(c: Mapping[str, Any], settings: Any) -> list[Check]:
    """ENABLE_USAGE_PORTAL=true: the portal's service runs, answers /healthz, reaches its database, and its
    collector recorded the user pods within 3 collection intervals."""
    from stages.s75_usage_portal import UNIT

    if not settings.enable_usage_portal:
        return []
    port, every = settings.usage_portal_port, int(settings.usage_collect_interval)
    journal = f"`sudo journalctl -u {UNIT} -n 50` says why; fix it, then `provision install --only 75`"
    state = c.get("usage_active") or "unknown"
    out = [Check("usage portal service", state == "active", f"{UNIT} is {state}"
                 + ("" if state == "active" else " (the hub's quota checks fail "
                    f"{settings.usage_limit_fail_mode} while it is down)" if settings.enable_usage_limit_enforcer
                    else ""), journal)]
    want = f"{port}/tcp"
    ufw, fwd = c.get("ufw") or {}, c.get("firewalld") or {}
    shut = [n for n, on, allowed in (("ufw", ufw.get("active"), ufw.get("allowed", [])),
                                     ("firewalld", fwd.get("running"), fwd.get("permanent", [])))
            if on and want not in allowed]
    if shut:
        out.append(Check("usage portal port", False, f"{' and '.join(shut)} active without {want}: the hub's pods "
                         "cannot reach the portal's API", "`provision install --only 75` opens it"))
    health = c.get("usage_health") or {}
    body = health.get("body") or {}
    if not health.get("status"):
        why = body.get("text", "")
        out.append(Check("usage portal health", False, f"http://127.0.0.1:{port}/healthz does not answer"
                         + (f" ({why})" if why else ""), journal))
        return out
    out.append(Check("usage portal health", True, f"http://127.0.0.1:{port}/healthz answers (HTTP {health['status']})"))
    db = body.get("db")
    out.append(Check("usage database", db == "ok", "reachable" if db == "ok" else
                     f"the portal cannot use its database: {db or 'no answer about it'}",
                     "check USAGE_DB_URL and that its server runs (the portal reconnects by itself); " + journal))
    out.append(_collector_check(body, every))
    groups = body.get("hub_groups")
    if isinstance(groups, dict) and groups.get("ok") is False:
        out.append(Check("usage hub groups", False, "the portal cannot read JupyterHub's groups: "
                         f"{groups.get('error') or 'no answer'}; group quotas use the last groups it read",
                         "re-run `provision install --from 70` (it gives hub service `usage` the role "
                         "`usage-portal`); " + journal, warning=True))
    return out


def _collector_check(body: Mapping[str, Any], every: int) -> Check:
    """Fresh: the last successful collection is younger than 3 intervals (the portal's own clock)."""
    fix = ("the Kubernetes API must answer the portal through MicroK8s' kubeconfig: `sudo microk8s status`; "
           "`sudo journalctl -u provision-usage-portal -n 50`")
    if body.get("collector") == "off":
        return Check("usage collector", False, "off: " + str(body.get("collector_reason") or "no reason given")
                     + "; no sessions are recorded", fix, warning=True)
    last = body.get("last_collection")
    if not isinstance(last, dict) or last.get("age_seconds") is None:
        return Check("usage collector", False, "no collection recorded yet (the portal just started?)",
                     f"wait {every} s and run `provision diag` again; if it stays, {fix}", warning=True)
    age = float(last["age_seconds"])
    if not last.get("ok"):  # the latest run failed: how long since one worked
        at, ok_at = _when(last.get("at")), _when(last.get("last_ok_at"))
        age = age + (at - ok_at).total_seconds() if at and ok_at else float("inf")
    limit = 3 * every
    if age < limit:
        return Check("usage collector", True, f"last collection {age:.0f} s ago (every {every} s)")
    since = "never succeeded" if age == float("inf") else f"last successful collection {age:.0f} s ago"
    error = f"; last error: {last.get('error')}" if last.get("error") else ""
    return Check("usage collector", False, f"stale: {since} (limit 3 x USAGE_COLLECT_INTERVAL = {limit} s): "
                 f"sessions are not being recorded{error}", fix)


def _when(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def snap_revisions(results: Mapping[str, Mapping[str, Any]]) -> list[Check]:
    revs = {}
    for name, f in results.items():
        mk = ((f.get("snap_list") or {}).get("snaps") or {}).get("microk8s")
        if mk:
            revs[name] = mk["rev"]
    if len(set(revs.values())) > 1:
        text = ", ".join(f"{n} rev {r}" for n, r in sorted(revs.items()))
        return [Check("microk8s revisions", False, f"nodes run different MicroK8s revisions: {text}",
                      "refresh them to one revision, one node at a time", warning=True)]
    return []


def cluster_checks(c: Mapping[str, Any], settings: Any, control: Node, results: Mapping[str, Any]) -> tuple[list[Check], dict[str, Check]]:
    if c.get("k_nodes") is None:
        return [Check("api server", False, "the Kubernetes API does not answer on the control node",
                      f"`sudo microk8s status`; {INSPECT}")] + check_usage_portal(c, settings), {}
    out = [Check("api server", True, f"{len(_items(c.get('k_nodes')))} node(s)")]
    out += check_dns(c, settings) + check_storage(c, settings) + check_helm(c, settings) + check_hub(c, settings)
    access, per_node = check_access(c, settings, control)
    out += access + check_nginx(c, settings, (c.get("local_clock") or {}).get("after", 0.0))
    out += check_firewall(c, settings) + check_usage_portal(c, settings) + snap_revisions(results)
    return out, per_node
