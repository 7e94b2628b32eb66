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


def test_a_hostpath_storage_volume_directory_is_made_0777_as_the_provisioner_does(tmp_path):
    """MicroK8s' hostpath-provisioner makes each volume's directory `mkdir -m 0777 -p` (umask 0) before the pod
    starts (canonical/hostpath-provisioner, Provision), so a user server running as uid 1000 can write its
    home (claim-<user>). The simulated kubelet used to make it root 0755, and the server could not start."""
    import stat

    from tests.harness.sim.runtime import Container

    st = Store(tmp_path / "store.json")
    pv_res, pvc_res = st.kind("PersistentVolume"), st.kind("PersistentVolumeClaim")
    st.create(st.kind("Namespace"), "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "jhub"}})
    home = tmp_path / "default-storage" / "jhub-claim-alice-pvc-1"
    st.create(pv_res, "", {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {
        "name": "pvc-1", "annotations": {"pv.kubernetes.io/provisioned-by": "microk8s.io/hostpath"}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": str(home)}}})
    st.create(pvc_res, "jhub", {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "metadata": {"name": "claim-alice", "namespace": "jhub"},
                                "spec": {"volumeName": "pvc-1", "accessModes": ["ReadWriteOnce"],
                                         "resources": {"requests": {"storage": "1Gi"}}}})
    pod = {"metadata": {"name": "jupyter-alice", "namespace": "jhub", "uid": "u1"},
           "spec": {"automountServiceAccountToken": False,
                    "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}}],
                    "containers": [{"name": "notebook", "image": "x",
                                    "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"},
                                                     {"name": "home", "mountPath": "/home/sub", "subPath": "s"}]}]}}
    spec = Cluster(st)._runtime_spec(pod, pod["spec"]["containers"][0])
    assert [m.get("create_mode") for m in spec["mounts"]] == [0o777, None]   # a subPath: the kubelet's, 0755
    Container._volumes(spec, tmp_path / "root", [])
    assert stat.S_IMODE(home.stat().st_mode) == 0o777
