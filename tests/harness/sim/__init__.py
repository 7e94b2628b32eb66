"""Simulated cluster for end-to-end tests: stand-ins for snap, MicroK8s, systemd, nvidia-smi, npu-smi,
ufw/firewalld and the Kubernetes API, installed into a test host's private root.

Everything here runs INSIDE a test host (its own network, mount and PID namespaces), except
`install.py` and `faults.py`, which the test process uses from outside through the host's root path.
Modules import each other relatively so the package works both from the repo (tests.harness.sim)
and as the copy installed into a host (provision_sim).
"""


def register(cli) -> None:
    """Extension hook of `python -m tests.harness` (adds --sim, --gpu, --npu, --firewalld to `up`)."""
    from .cli import register as _register
    _register(cli)
