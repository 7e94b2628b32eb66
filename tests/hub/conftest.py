"""KubeSpawner loads a kubeconfig even in its `_mock` mode; give it one that points nowhere useful.
No test here ever calls the Kubernetes API: pods are built, not created."""

from __future__ import annotations

import pytest

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: none
  cluster: {server: "https://127.0.0.1:9"}
contexts:
- name: none
  context: {cluster: none, user: none}
current-context: none
users:
- name: none
  user: {token: unused}
"""


@pytest.fixture(autouse=True, scope="session")
def _kubeconfig(tmp_path_factory):
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(KUBECONFIG)
    mp = pytest.MonkeyPatch()
    mp.setenv("KUBECONFIG", str(path))
    yield
    mp.undo()
