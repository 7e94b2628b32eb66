"""The image archives are genuine: the real containerd imports them and reports the digests we predict."""

from __future__ import annotations

import subprocess

from tests.harness import images


def _ctr(sock, *args):
    return subprocess.run(["ctr", "-a", str(sock), "-n", "k8s.io", *args], capture_output=True, text=True, check=False)


def test_oci_archive_imports_with_predicted_digest(containerd, tmp_path):
    digest = images.oci_archive(tmp_path / "a.tar", "docker.io/library/busybox:1.28.4")
    r = _ctr(containerd, "images", "import", str(tmp_path / "a.tar"))
    assert r.returncode == 0, r.stderr
    assert f"unpacking docker.io/library/busybox:1.28.4 ({digest})...done" in r.stdout
    listed = _ctr(containerd, "images", "ls").stdout
    assert any(line.split()[0] == "docker.io/library/busybox:1.28.4" and line.split()[2] == digest
               for line in listed.splitlines()[1:])


def test_docker_archive_imports_and_multiarch_index_keeps_ref(containerd, tmp_path):
    images.docker_archive(tmp_path / "d.tar", "registry.k8s.io/pause:3.7")
    assert _ctr(containerd, "images", "import", str(tmp_path / "d.tar")).returncode == 0
    digest = images.oci_archive(tmp_path / "m.tar", "docker.io/calico/node:v3.25.1", extra_arches=("arm64",))
    r = _ctr(containerd, "images", "import", "--platform", "amd64", str(tmp_path / "m.tar"))
    assert r.returncode == 0 and digest in r.stdout
    refs = _ctr(containerd, "images", "ls", "-q").stdout.split()
    assert {"registry.k8s.io/pause:3.7", "docker.io/calico/node:v3.25.1"} <= set(refs)


def test_archives_are_deterministic_and_name_their_refs(tmp_path):
    a = images.oci_archive(tmp_path / "1.tar", "quay.io/jupyterhub/k8s-hub:4.2.0")
    b = images.oci_archive(tmp_path / "2.tar", "quay.io/jupyterhub/k8s-hub:4.2.0")
    c = images.oci_archive(tmp_path / "3.tar", "quay.io/jupyterhub/k8s-hub:4.2.1")
    assert a == b != c
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()
    assert images.archive_refs(tmp_path / "1.tar") == ["quay.io/jupyterhub/k8s-hub:4.2.0"]
    assert images.file_name_for("quay.io/jupyterhub/k8s-hub:4.2.0") == "quay.io_jupyterhub_k8s-hub_4.2.0.tar"
