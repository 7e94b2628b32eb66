"""Stage 90: every layer's health at the end of `provision install`, as checks; it changes nothing.

The same checks as `provision diag` (stages/_diag.py gathers, stages/_diag_checks.py judges): each node reports
its own facts in one round trip, the control node also the cluster's objects; the checks that need every node at
once (clock skew against the control node, the NodePort of each node, the cluster-wide layers) run in
`verify_all`, the cluster-wide ones reported on the control node. A failed check fails the install's last stage
with its fix; warnings are shown and do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provision.stage import Check, Node, Plan, Scope, Stage
from stages import _diag as D


class Diagnostics(Stage):
    """Check every layer (nodes, MicroK8s, images, network, DNS, storage, accelerators, hub, access); change nothing."""

    number = 90
    title = "Diagnostics"
    scope = Scope.NODE

    def gather(self, host: Any, settings: Any, node: Node) -> Mapping[str, Any]:
        return D.gather(host, settings, node)

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        return Plan.noop("diagnostics only read")

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        return ()  # every check is in verify_all: most need the control node's view of the cluster

    def verify_all(self, facts_by_node: Mapping[str, Mapping[str, Any]], settings: Any,
                   nodes: Sequence[Node]) -> dict[str, list[Check]]:
        from stages._diag_checks import all_checks

        present = [n for n in nodes if n.name in facts_by_node]
        control = next((n for n in present if n.is_control), None)
        if control is None:
            return {}
        manifest, problem = D.load_bundle(getattr(self.context, "bundle_dir", None))
        checks = all_checks(facts_by_node, settings, present, manifest, problem)
        cluster = checks.pop(D.CLUSTER, [])
        checks.setdefault(control.name, []).extend(cluster)
        return checks
