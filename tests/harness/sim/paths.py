"""File locations inside a test host: the real MicroK8s/snapd paths (microk8s.md §1, §7, §8) plus the
simulator's own directory. Plain constants: nothing is computed at import."""

SNAP = "/snap/microk8s/current"
SNAP_DATA = "/var/snap/microk8s/current"
SNAP_COMMON = "/var/snap/microk8s/common"
SNAP_BIN = "/snap/bin"
SNAPD_STATE = "/var/lib/snapd/sim-state.json"     # stand-in for /var/lib/snapd/state.json
SNAPD_SNAPS = "/var/lib/snapd/snaps"              # where snapd keeps NAME_REV.snap files

CONTAINERD_SOCK = SNAP_COMMON + "/run/containerd.sock"
CONTAINERD_ROOT = SNAP_COMMON + "/var/lib/containerd"
CONTAINERD_STATE = SNAP_COMMON + "/run/containerd"
SIDELOAD_DIR = SNAP_COMMON + "/etc/sideload"

ARGS = SNAP_DATA + "/args"
CERTS = SNAP_DATA + "/certs"
CREDENTIALS = SNAP_DATA + "/credentials"
LOCKS = SNAP_DATA + "/var/lock"
CLUSTERED_LOCK = LOCKS + "/clustered.lock"
STOPPED_LOCK = LOCKS + "/stopped.lock"
HA_LOCK = LOCKS + "/ha-cluster"
ADDON_LOCK = LOCKS + "/.microk8s-addon-lock"
CLUSTER_TOKENS = CREDENTIALS + "/cluster-tokens.txt"
CLIENT_CONFIG = CREDENTIALS + "/client.config"

# The simulator's own files (not part of any real system).
SIM = "/var/lib/provision-sim"
SIM_CONFIG = SIM + "/host.json"        # written by install.py: name, ip, python, gpus, npus
SIM_FAULTS = SIM + "/faults"           # one JSON file per armed fault (faults.py)
SIM_RUN = SIM + "/run"                 # pid files and logs of the processes the stand-ins start
SIM_SYSTEMD = SIM + "/systemd.json"    # unit states for the systemctl stand-in
SIM_FIREWALL = SIM + "/firewall.json"  # ufw / firewalld state
SIM_APISTORE = SIM + "/apiserver.json"  # the API stand-in's objects (persist across stop/start)
SIM_CLUSTER = SIM + "/cluster.json"     # this node's cluster membership as the stand-ins see it
SIM_LIB = "/usr/local/lib/provision-sim"  # the copy of this package, importable as provision_sim

API_PORT = 16443
DQLITE_PORT = 19001
DQLITE_DIR = SNAP_DATA + "/var/kubernetes/backend"   # cluster.yaml: the dqlite members
AGENT_PORT = 25000
KUBELET_PORT = 10250
