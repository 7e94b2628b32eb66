"""Which images the offline bundle must carry, derived from the settings with the code the install runs.

Nothing here is a hand-kept list: the charts are rendered by the real `helm template` with the values stages
50 and 70 hand to Helm, and every container and init container image in the rendered objects is taken; then
the images that appear later, outside the templates: the single-user image and every profile's image (the hub
starts them), the GPU Operator's operands (its ClusterPolicy, from the chart's values with stage 50's values,
only the enabled ones), the RDMA shared device plugin (the NicClusterPolicy stage 50 writes), the smoke-test
images of stage 60, the MicroK8s core images and SANDBOX_IMAGE. Roles are those stage 20 imports them on:
operands and the Ascend plugin only on gpu/npu nodes, the rest on every node (pods may land anywhere).

    needed_images(settings, "offline-images/charts", "helm")  ->  [ImageNeed(ref, roles, reason), ...]
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import BundleError, ProvisionError
from provision.oci import EVERY_NODE, ImageNeed

if TYPE_CHECKING:
    from provision.config import Settings

__all__ = ["ImageNeed", "find_chart_file", "needed_images", "rendered_images"]

ASCEND_PLUGIN_IMAGE = "ascend-k8sdeviceplugin:v3.0.0"  # mind-cluster build/ascendplugin.yaml (reference/ascend.md)
_POD_KEYS = ("containers", "initContainers", "ephemeralContainers")


def find_chart_file(charts_dir: str | Path, name: str, version: str | None = None) -> Path:
    """charts_dir/NAME-VERSION.tgz (as `helm pull` names it; 'v' prefix either way), or the only NAME-*.tgz."""
    found = [f for f in sorted(Path(charts_dir).glob(f"{name}-*.tgz"))
             if re.fullmatch(rf"{re.escape(name)}-v?\d+\.\d+\.\d+[\w.+-]*\.tgz", f.name)]
    if version:
        found = [f for f in found if f.name[len(name) + 1:-4].lstrip("v") == version.lstrip("v")]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise BundleError(f"{charts_dir}: {what} {name} chart" + (f" {version}" if version else "") + " found",
                          f"put {name}-{version or 'VERSION'}.tgz there (`helm pull` writes that name)")
    return found[0]


def _walk_images(obj: Any, where: str, out: list[tuple[str, str]]) -> None:
    if isinstance(obj, Mapping):
        for key in _POD_KEYS:
            for c in obj.get(key) or []:
                if isinstance(c, Mapping) and isinstance(c.get("image"), str):
                    out.append((c["image"], f"{where} {key[:-1]} {c.get('name', '?')}"))
        for k, v in obj.items():
            if k not in _POD_KEYS:
                _walk_images(v, where, out)
    elif isinstance(obj, list):
        for v in obj:
            _walk_images(v, where, out)


def rendered_images(helm: str, chart: Path, values: Mapping[str, Any], release: str, namespace: str,
                    kube_version: str) -> list[tuple[str, str]]:
    """(image, 'Kind/name container X') for every container of every object `helm template` renders."""
    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(values if isinstance(values, str) else yaml.safe_dump(dict(values)))
        f.flush()
        argv = [helm, "template", release, str(chart), "-n", namespace, "-f", f.name, "--kube-version", kube_version]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except OSError:
            raise ProvisionError(f"helm not found ({helm}): it renders the charts to find their images",
                                 "install helm 3 (https://helm.sh/docs/intro/install/) or pass --helm PATH") from None
    if r.returncode != 0:
        raise ProvisionError(f"`helm template` of {chart.name} failed: {r.stderr.strip()[-300:]}",
                             "check the chart file and the settings (`provision render values`)")
    out: list[tuple[str, str]] = []
    for doc in yaml.safe_load_all(r.stdout):
        if isinstance(doc, Mapping):
            meta = doc.get("metadata") or {}
            _walk_images(doc.get("spec"), f"{doc.get('kind')}/{meta.get('name')}", out)
    return out


class _Needs:
    """ImageNeeds by normalized ref, roles and reasons merged, in first-seen order."""

    def __init__(self) -> None:
        self.roles: dict[str, set[str]] = {}
        self.reasons: dict[str, list[str]] = {}

    def add(self, ref: str, roles: Iterable[str], reason: str) -> None:
        from provision.images import normalize_ref

        ref = normalize_ref(ref)
        self.roles.setdefault(ref, set()).update(roles)
        if reason not in self.reasons.setdefault(ref, []):
            self.reasons[ref].append(reason)

    def result(self) -> list[ImageNeed]:
        out = []
        for ref, roles in self.roles.items():
            r = EVERY_NODE if set(EVERY_NODE) <= roles else tuple(sorted(roles))
            out.append(ImageNeed(ref, r, "; ".join(self.reasons[ref])))
        return out


def needed_images(settings: Settings, charts_dir: str | Path, helm: str = "helm") -> list[ImageNeed]:
    """Every image an install with these settings needs, with the roles that import it and why."""
    from provision.bundle import CORE_IMAGES, track_of
    from provision.jupyterhub.chart import check_jupyterhub_chart, open_chart
    from provision.jupyterhub.values import (
        ClusterFacts,
        images_in_values,
        merge_values,
        plain,
        release_values,
        to_yaml,
    )

    needs = _Needs()
    track = track_of(settings.microk8s_channel)
    kube = f"{track}.0"
    every = EVERY_NODE
    needs.add(settings.sandbox_image, every, "SANDBOX_IMAGE (pod sandbox)")
    if track not in CORE_IMAGES:
        raise BundleError(f"MicroK8s {track}: provision has no list of its core images (Calico, CoreDNS, hostpath)",
                          "use a MICROK8S_CHANNEL provision knows (1.30), or add its images.txt list")
    for ref in CORE_IMAGES[track]:
        needs.add(ref, every, f"MicroK8s {track} core image")

    # JupyterHub: the chart rendered with stage 70's values, then what the hub starts later
    tgz = find_chart_file(charts_dir, "jupyterhub", settings.z2jh_chart_version)
    chart = check_jupyterhub_chart(open_chart(tgz))
    values = plain(release_values(settings, ClusterFacts(), chart).values)
    for ref, where in rendered_images(helm, tgz, to_yaml(values, show_secrets=True, quote_all=True), "jhub",
                                      "jhub", kube):
        needs.add(ref, every, f"jupyterhub {chart.version} chart: {where}")
    needs.add(settings.singleuser_image, every, "SINGLEUSER_IMAGE (user servers)")
    merged = merge_values(chart.values, values)
    for c in (merged.get("singleuser") or {}).get("initContainers") or []:
        if isinstance(c, Mapping) and c.get("image"):
            needs.add(str(c["image"]), every, f"user server init container {c.get('name', '?')}")
    for p in (merged.get("singleuser") or {}).get("profileList") or []:
        img = ((p or {}).get("kubespawner_override") or {}).get("image")
        if img:
            needs.add(str(img), every, f"profile {p.get('slug') or p.get('display_name')}")
    for ref in sorted(images_in_values(merged) - set(needs.roles)):
        needs.add(ref, every, "jupyterhub values")  # anything the values name that the checks above missed

    if settings.use_gpu_operator:
        _gpu(needs, settings, charts_dir, helm, kube)
    if settings.enable_ib:
        _ib(needs, settings, charts_dir, helm, kube)
    if settings.enable_npu:
        needs.add(ASCEND_PLUGIN_IMAGE, ("npu",), "Ascend device plugin (stage 50; Huawei's image: bring it as a "
                                                 "`docker save` file when no registry you use has it)")
        needs.add(settings.singleuser_image, every, "stage 60 NPU smoke test (npu-smi in the user image)")
    return needs.result()


def _gpu(needs: _Needs, settings: Any, charts_dir: Any, helm: str, kube: str) -> None:
    from stages import _gpu_operator as G

    tgz = find_chart_file(charts_dir, "gpu-operator", settings.gpu_operator_version)
    chart = G.open_operator_chart(tgz)
    values = G.release_values()
    for ref, where in rendered_images(helm, tgz, values, G.RELEASE, G.NAMESPACE, kube):
        needs.add(ref, EVERY_NODE, f"gpu-operator {chart.version} chart: {where}")
    for ref, where, comp in G.needed_images(chart, values):
        roles = EVERY_NODE if where == "cluster" else ("gpu",)
        needs.add(ref, roles, f"GPU Operator {comp}" + (" (ClusterPolicy operand)" if where == "gpu" else ""))
    cuda = G.image_ref(G.merged(chart.values, values).get("validator") or {}, chart.app_version)
    needs.add(cuda, ("gpu",), "stage 60 GPU smoke test (the validator image's vectorAdd)")


def _ib(needs: _Needs, settings: Any, charts_dir: Any, helm: str, kube: str) -> None:
    from stages import _network_operator as N

    tgz = find_chart_file(charts_dir, "network-operator")
    chart = N.open_network_chart(tgz)
    nfd = not settings.use_gpu_operator  # its own NFD only without the GPU Operator's (stage 50)
    for ref, where in rendered_images(helm, tgz, N.release_values(nfd), N.RELEASE, N.NAMESPACE, kube):
        needs.add(ref, EVERY_NODE, f"network-operator {chart.version} chart: {where}")
    for ref, comp in N.needed_images(chart, nfd):
        needs.add(ref, EVERY_NODE, f"Network Operator {comp}" + (" (NicClusterPolicy)" if "plugin" in comp else ""))
