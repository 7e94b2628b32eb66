"""Stage 70 with volumes an earlier `provision uninstall` kept: their static PVs are applied before the release,
so the new hub-db-dir claim binds to the old database (stages/_data.py)."""

from __future__ import annotations

import yaml

from stages import _data as D
from stages.s70_jupyterhub import JupyterHubStage
from tests.render.conftest import make_settings
from tests.render.test_stage70 import NODE, chart, facts, readiness  # noqa: F401  (chart: the fixture)


def test_kept_volumes_become_pvs_before_the_release(chart):  # noqa: F811
    s = make_settings()
    rec = {"dir": f"{D.KEPT_DIR}/jhub-hub-db-dir-pvc-1", "namespace": "jhub", "claim": "hub-db-dir",
           "storage_class": "microk8s-hostpath", "capacity": "1Gi", "access_modes": ["ReadWriteOnce"]}
    kept = D.kept_pvs([rec], s.hub_namespace)
    plan = JupyterHubStage().plan(facts(chart, s, release=None, deployed_digest=None, hub=readiness(None, None),
                                        admin=None, kept_pvs=kept), s, NODE)
    names = [type(a).__name__ for a in plan.actions]
    assert names[:2] == ["KubectlApply", "HelmRelease"], names
    (doc,) = yaml.safe_load_all(plan.actions[0].manifest)
    assert doc["spec"]["claimRef"]["name"] == "hub-db-dir" and doc["spec"]["hostPath"]["path"] == rec["dir"]
    converged = JupyterHubStage().plan(facts(chart, s, kept_pvs=[]), s, NODE)
    assert converged.empty
