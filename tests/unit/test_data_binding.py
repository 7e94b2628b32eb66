"""The simulated PV controller binds a pre-bound PV (claimRef) only to its own claim, as Kubernetes does: two
kept volumes (hub-db-dir, claim-alice) must each come back to their own claim after a re-install."""

from __future__ import annotations

from stages import _data as D
from tests.harness.sim.controllers import Cluster
from tests.harness.sim.store import Store


def test_prebound_kept_pvs_bind_to_their_own_claims(tmp_path):
    st = Store(tmp_path / "store.json")
    ns, pv_res, pvc_res = st.kind("Namespace"), st.kind("PersistentVolume"), st.kind("PersistentVolumeClaim")
    st.create(ns, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "jhub"}})
    recs = [{"dir": f"/kept/{c}", "namespace": "jhub", "claim": c, "storage_class": "microk8s-hostpath",
             "capacity": "1Gi", "access_modes": ["ReadWriteOnce"]} for c in ("claim-alice", "hub-db-dir")]
    for pv in D.kept_pvs(recs, "jhub"):   # claim-alice's PV first: an unchecked claimRef would give it to the hub
        st.create(pv_res, "", pv)
    for claim in ("hub-db-dir", "claim-alice"):
        st.create(pvc_res, "jhub", {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                    "metadata": {"name": claim, "namespace": "jhub"},
                                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "microk8s-hostpath",
                                             "resources": {"requests": {"storage": "1Gi"}}}})
    Cluster(st)._pvcs()
    for claim in ("hub-db-dir", "claim-alice"):
        pvc = st.get(pvc_res, "jhub", claim)
        pv = st.get(pv_res, "", pvc["spec"]["volumeName"])
        assert pv["spec"]["hostPath"]["path"] == f"/kept/{claim}", claim
