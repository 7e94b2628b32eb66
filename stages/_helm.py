"""Helm releases from the bundle's chart packages, shared by the stages that install one (50, 70): the
`helm3 upgrade --install` action (values never shown, never left on the node) and the fact parsers over
`helm3 list` / `helm3 get values` that tell whether a release is there with these values."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision import facts as F
from provision.stage import Action, ApplyContext
from stages._microk8s import mk

CHART_DIR_ON_NODE = "/var/lib/provision/charts"

# Same canonical form as provision.jupyterhub.values.values_digest, run on the node over `helm3 get values -o json`.
DIGEST_PY = r"""
import hashlib, json, sys
def canon(v):
    if isinstance(v, dict):
        return {str(k): canon(x) for k, x in v.items()}
    if isinstance(v, list):
        return [canon(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
raw = sys.stdin.read().strip()
if not raw:
    print("none")
else:
    data = json.loads(raw) or {}
    print(hashlib.sha256(json.dumps(canon(data), sort_keys=True, separators=(",", ":"),
                                    ensure_ascii=False).encode()).hexdigest())
"""



def parse_release(raw: F.Raw, release: str) -> dict[str, Any] | None | str:
    """`helm3 list -o json` → the release's status and chart version; None when absent; "error" when helm fails."""
    if not raw.ok:
        return "error"
    start = raw.out.find("[")
    try:
        items = json.loads(raw.out[start:]) if start >= 0 else []
    except ValueError:
        return "error"
    rel = next((r for r in items if r.get("name") == release), None)
    if rel is None:
        return None
    chart = str(rel.get("chart", ""))
    name, _, version = chart.rpartition("-")
    while name and not version.lstrip("v")[:1].isdigit() and "-" in name:  # '-' in versions (4.3.0-beta.1, v25.10.0)
        name, _, head = name.rpartition("-")
        version = f"{head}-{version}"
    return {"status": str(rel.get("status", "")), "chart_name": name, "chart_version": version,
            "revision": str(rel.get("revision", ""))}


def parse_digest(raw: F.Raw) -> str | None:
    text = raw.out.strip().splitlines()[-1:] if raw.ok else []
    return text[0] if text and len(text[0]) == 64 else None


def parse_json(raw: F.Raw) -> Any:
    if not raw.ok:
        return None
    start = min([i for i in (raw.out.find("{"), raw.out.find("[")) if i >= 0], default=-1)
    try:
        return json.loads(raw.out[start:]) if start >= 0 else None
    except ValueError:
        return None



@dataclass(frozen=True)
class HelmRelease(Action):
    """`microk8s helm3 upgrade --install` from the bundled chart; the values file is 0600 and always removed."""

    release: str
    namespace: str
    chart_path: str  # on this machine (the bundle)
    chart_version: str
    values_yaml: bytes = field(repr=False)  # holds secrets: never shown
    values_digest: str = ""
    timeout: int = 600

    def describe(self) -> str:
        return (f"helm upgrade --install {self.release} {Path(self.chart_path).name} -n {self.namespace} "
                f"(chart {self.chart_version}, values sha256 {self.values_digest[:12]}, secrets not shown)")

    def apply(self, host: Any, ctx: ApplyContext) -> None:
        chart = self._chart_on_node(host)
        # values.yaml and its in-transit copy live in a fresh 0700 mktemp -d directory, removed after helm
        with host.private_dir() as d:
            values = f"{d}/values.yaml"
            host.put_bytes(self.values_yaml, values, mode=0o600, sudo=True)
            host.run(list(mk("helm3", "upgrade", "--install", self.release, chart, "-n", self.namespace,
                              "--create-namespace", "-f", values, "--timeout", f"{self.timeout}s")),
                     sudo=True, timeout=self.timeout + 120)

    def _chart_on_node(self, host: Any) -> str:
        from stages._microk8s import is_local

        if is_local(host):
            return self.chart_path
        remote = f"{CHART_DIR_ON_NODE}/{Path(self.chart_path).name}"
        host.run(["mkdir", "-p", CHART_DIR_ON_NODE], sudo=True)
        host.put(Path(self.chart_path), remote, mode=0o644, sudo=True)
        return remote
