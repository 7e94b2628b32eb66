"""The test bundle: `python -m tests.harness bundle --dir DIR` writes a complete offline bundle in the
layout of offline-images/README.md: core20 + microk8s snaps with .assert files the snap stand-in
accepts, genuine tiny image tarballs (OCI and docker-save, correct digests) for every image the stages
and the charts need, the charts (the REAL packages of z2jh 4.4.0, the default, and 4.2.0, of the GPU operator v25.10.0 and of
the Network Operator 25.7.0, copied from shared/reference/charts), and manifest.yaml written by
provision.bundle.write_manifest.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

from tests.harness import images as imgs

REPO = Path(__file__).resolve().parents[2]
CORE20_REV, MICROK8S_REV = 2264, 7394
MICROK8S_VERSION = "v1.30.14"

# microk8s.md §10 (branch 1.30 images.txt) + the sandbox image
MICROK8S_CORE = [
    "docker.io/calico/cni:v3.25.1", "docker.io/calico/kube-controllers:v3.25.1", "docker.io/calico/node:v3.25.1",
    "docker.io/cdkbot/hostpath-provisioner:1.5.0", "docker.io/coredns/coredns:1.10.1",
    "docker.io/library/busybox:1.28.4", "registry.k8s.io/ingress-nginx/controller:v1.11.5",
    "registry.k8s.io/metrics-server/metrics-server:v0.6.3", "registry.k8s.io/pause:3.7",
]
# Default install without autohttps (traefik, k8s-secret-sync). 4.4.0: its values.yaml (see
# provision/jupyterhub/data/z2jh-4.4.0/SOURCE.md); 4.2.0: z2jh-4.2.0-images.txt.
JUPYTERHUB_4_4 = [
    "quay.io/jupyterhub/k8s-hub:4.4.0", "quay.io/jupyterhub/configurable-http-proxy:5.2.0",
    "quay.io/jupyterhub/k8s-network-tools:4.4.0", "quay.io/jupyterhub/k8s-image-awaiter:4.4.0",
    "registry.k8s.io/pause:3.10.1", "registry.k8s.io/kube-scheduler:v1.30.14",
]
JUPYTERHUB_4_2 = [
    "quay.io/jupyterhub/k8s-hub:4.2.0", "quay.io/jupyterhub/configurable-http-proxy:4.6.3",
    "quay.io/jupyterhub/k8s-network-tools:4.2.0", "quay.io/jupyterhub/k8s-image-awaiter:4.2.0",
    "registry.k8s.io/pause:3.10", "registry.k8s.io/kube-scheduler:v1.30.11",
]
JUPYTERHUB = JUPYTERHUB_4_4 + JUPYTERHUB_4_2
# the charts' singleuser.image defaults; 4.2.0's is also SINGLEUSER_IMAGE's default
SINGLEUSER = ["quay.io/jupyterhub/k8s-singleuser-sample:4.4.0", "quay.io/jupyterhub/k8s-singleuser-sample:4.2.0"]
Z2JH_APP_VERSIONS = {"4.4.0": "5.5.0", "4.2.0": "5.3.0"}  # the charts' appVersion (JupyterHub)
# gpu-operator.md §2, minimal air-gap set for driver.enabled=false (+ MIG manager for H100/A100). The operator
# (Deployment, CRD hook Job) and NFD (its worker is a DaemonSet on every node) may run on any node; the operands
# (validator = the operator image, toolkit, device plugin/GFD, DCGM exporter, MIG manager) on GPU nodes.
GPU_OPERATOR_CLUSTER = ["nvcr.io/nvidia/gpu-operator:v25.10.0", "registry.k8s.io/nfd/node-feature-discovery:v0.18.2"]
GPU_OPERANDS = [  # the validator's image is the operator's, already on every node
    "nvcr.io/nvidia/k8s/container-toolkit:v1.18.0", "nvcr.io/nvidia/k8s-device-plugin:v0.18.0",
    "nvcr.io/nvidia/k8s/dcgm-exporter:4.4.1-4.6.0-distroless", "nvcr.io/nvidia/cloud-native/k8s-mig-manager:v0.13.0",
]
GPU_OPERATOR = GPU_OPERATOR_CLUSTER + GPU_OPERANDS
ASCEND = ["docker.io/library/ascend-k8sdeviceplugin:v3.0.0"]
# network-operator.md §2-3 (chart 25.7.0): the operator (Deployment and hook Jobs), its NFD (only without the GPU
# Operator) and the RDMA shared device plugin of the NicClusterPolicy. No InfiniBand role: every node.
NETWORK_OPERATOR = ["nvcr.io/nvidia/cloud-native/network-operator:v25.7.0",
                    "nvcr.io/nvidia/mellanox/node-feature-discovery:network-operator-v25.7.0",
                    "nvcr.io/nvidia/mellanox/k8s-rdma-shared-dev-plugin:network-operator-v25.7.0"]

TARBALLS = {  # file -> (refs, roles, format)
    "images/microk8s-core.tar": (MICROK8S_CORE, ["control-plane", "worker"], "oci"),
    "images/jupyterhub.tar": (JUPYTERHUB, ["control-plane", "worker"], "oci"),
    "images/singleuser.tar": (SINGLEUSER, ["control-plane", "worker"], "docker"),
    "images/gpu-operator-cluster.tar": (GPU_OPERATOR_CLUSTER, ["control-plane", "worker"], "oci"),
    "images/gpu-operator.tar": (GPU_OPERANDS, ["gpu"], "oci"),
    "images/ascend.tar": (ASCEND, ["npu"], "oci"),
    "images/network-operator.tar": (NETWORK_OPERATOR, ["control-plane", "worker"], "oci"),
}


def _multi_oci(path: Path, refs: list[str]) -> None:
    """One OCI archive holding several images (what `ctr images export` of many refs writes)."""
    import json
    files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    manifests = []
    for ref in refs:
        parts = imgs.image_parts(ref)
        man = imgs._manifest(parts)
        for b in (parts.layer_gz, parts.config, man):
            files["blobs/sha256/" + imgs.sha256_digest(b)[7:]] = b
        manifests.append({"mediaType": imgs.OCI_MANIFEST, "digest": imgs.sha256_digest(man), "size": len(man),
                          "annotations": {"io.containerd.image.name": ref,
                                          "org.opencontainers.image.ref.name": imgs.split_ref(ref)[1]},
                          "platform": {"architecture": "amd64", "os": "linux"}})
    files["index.json"] = json.dumps({"schemaVersion": 2, "mediaType": imgs.OCI_INDEX, "manifests": manifests},
                                     sort_keys=True).encode()
    path.write_bytes(imgs.tar_bytes(files))


def _multi_docker(path: Path, refs: list[str]) -> None:
    import hashlib
    import json
    files: dict[str, bytes] = {}
    entries = []
    for ref in refs:
        parts = imgs.image_parts(ref)
        lid = hashlib.sha256(parts.layer).hexdigest()
        cfg = hashlib.sha256(parts.config).hexdigest() + ".json"
        files.update({cfg: parts.config, f"{lid}/layer.tar": parts.layer, f"{lid}/VERSION": b"1.0"})
        entries.append({"Config": cfg, "RepoTags": [ref], "Layers": [f"{lid}/layer.tar"]})
    files["manifest.json"] = json.dumps(entries).encode()
    path.write_bytes(imgs.tar_bytes(files))


def _tgz(path: Path, root: str, files: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


REAL_CHARTS = ("jupyterhub-4.4.0.tgz", "jupyterhub-4.2.0.tgz", "gpu-operator-v25.10.0.tgz", "network-operator-25.7.0.tgz")


def reference_charts() -> Path | None:
    """shared/reference/charts/ (the packages a user brings, see its SOURCE.md) beside the repository or
    above it (CI clones the repository next to a copy of shared/), or None."""
    for d in (REPO, *REPO.parents):
        charts = d / "shared" / "reference" / "charts"
        if all((charts / f).is_file() for f in REAL_CHARTS):
            return charts
    return None


def write_charts(out: Path) -> list[str]:
    """The real chart packages (templates, subcharts, CRDs) from shared/reference/charts; without them, a
    stand-in archive per chart with only Chart.yaml and the real values.yaml (+ values.schema.json)."""
    import shutil
    import warnings

    real = reference_charts()
    if real is not None:
        for f in REAL_CHARTS:
            shutil.copyfile(real / f, out / f)
        return list(REAL_CHARTS)
    warnings.warn("shared/reference/charts not found: the test bundle carries charts without templates", stacklevel=2)
    data = REPO / "tests" / "data"
    written = []
    for version, app in Z2JH_APP_VERSIONS.items():
        z2jh = REPO / "provision" / "jupyterhub" / "data" / f"z2jh-{version}"  # the copy shipped in the package
        chart_yaml = (f"apiVersion: v2\nname: jupyterhub\nversion: {version}\nappVersion: {app}\n"
                      "kubeVersion: '>=1.28.0-0'\ndescription: Multi-user Jupyter installation\n").encode()
        _tgz(out / f"jupyterhub-{version}.tgz", "jupyterhub", {
            "Chart.yaml": chart_yaml, "values.yaml": (z2jh / "values.yaml").read_bytes(),
            "values.schema.json": (z2jh / "values.schema.json").read_bytes()})
        written.append(f"jupyterhub-{version}.tgz")
    gpu = data / "gpu-operator-v25.10.0"
    gpu_chart = (b"apiVersion: v2\nname: gpu-operator\nversion: v25.10.0\nappVersion: v25.10.0\n"
                 b"kubeVersion: '>= 1.16.0-0'\ndescription: NVIDIA GPU Operator\n")
    _tgz(out / "gpu-operator-v25.10.0.tgz", "gpu-operator", {
        "Chart.yaml": gpu_chart, "values.yaml": (gpu / "values.yaml").read_bytes()})
    net_chart = (b"apiVersion: v2\nname: network-operator\nversion: 25.7.0\nappVersion: v25.7.0\n"
                 b"kubeVersion: '>= 1.21.0'\ndescription: Nvidia network operator\n")
    _tgz(out / "network-operator-25.7.0.tgz", "network-operator", {
        "Chart.yaml": net_chart, "values.yaml": (data / "network-operator-25.7.0" / "values.yaml").read_bytes()})
    return [*written, "gpu-operator-v25.10.0.tgz", "network-operator-25.7.0.tgz"]


def write_snaps(out: Path) -> None:
    from tests.harness.sim.snapfile import assertion_text, snap_yaml, write_snap
    core = out / f"core20_{CORE20_REV}.snap"
    write_snap(core, snap_yaml("core20", "20250213", confinement="strict", snap_type="base"))
    (out / f"core20_{CORE20_REV}.assert").write_text(assertion_text("core20", CORE20_REV, core))
    mk = out / f"microk8s_{MICROK8S_REV}.snap"
    write_snap(mk, snap_yaml("microk8s", MICROK8S_VERSION, base="core20", confinement="classic"))
    (out / f"microk8s_{MICROK8S_REV}.assert").write_text(assertion_text("microk8s", MICROK8S_REV, mk))


def write_bundle(dir: str | Path, *, gpu: bool = True, npu: bool = True, manifest: bool = True) -> Path:
    """Write the whole bundle into `dir` (created); returns the directory. Deterministic output."""
    out = Path(dir)
    for sub in ("snaps", "images", "charts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_snaps(out / "snaps")
    roles: dict[str, list[str]] = {}
    for rel, (refs, r, fmt) in TARBALLS.items():
        if ("/gpu-operator" in rel and not gpu) or (rel.endswith("ascend.tar") and not npu):
            continue
        (_multi_oci if fmt == "oci" else _multi_docker)(out / rel, refs)
        roles[rel] = r
    write_charts(out / "charts")
    if manifest:
        from provision.bundle import write_manifest
        write_manifest(out, microk8s_channel="1.30/stable", images=roles)
    return out


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, help="where to write the bundle (offline-images layout)")
    p.add_argument("--no-gpu", action="store_true", help="leave out the GPU operator images")
    p.add_argument("--no-npu", action="store_true", help="leave out the Ascend device plugin image")


def _run(args: argparse.Namespace) -> int:
    out = write_bundle(args.dir, gpu=not args.no_gpu, npu=not args.no_npu)
    print(f"bundle written to {out}")
    return 0


def register(cli) -> None:
    cli.command("bundle", "write a complete offline test bundle (snaps, images, charts, manifest)", _add, _run)
