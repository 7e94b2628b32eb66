"""Stage 20: every image a node's roles need, imported from the bundle into containerd's k8s.io namespace.

Which images: the manifest's `roles` (control-plane, worker, gpu, npu) against the node's roles. What is
already there: `microk8s ctr images ls`, compared by digest with the digest the manifest recorded from
the tarball, so a present image costs neither a transfer nor a read of its tarball. Tarballs are sent
to remote nodes once, checked by sha256 on arrival, and imported with `--platform <node arch>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from provision import facts as F
from provision.stage import Check, Node, Plan, Scope
from stages import _microk8s as M


class Images(M.BundleStage):
    """Import the offline images each node needs; skip those present with the same digest."""

    number = 20
    title = "Import offline images"
    scope = Scope.NODE

    def probes(self, settings: Any, manifest: Any) -> list[F.Probe]:
        return [F.arch, M.ctr_images]

    def plan(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
        return plan(facts, settings, node)

    def verify(self, facts: Mapping[str, Any], settings: Any, node: Node) -> Sequence[Check]:
        return verify(facts, settings, node)


def needed_refs(manifest: Any, node: Node) -> list[str]:
    return list(dict.fromkeys(i.ref for i in manifest.images_for_roles(node.roles)))


def plan(facts: Mapping[str, Any], settings: Any, node: Node) -> Plan:
    manifest = facts["bundle"]
    refs = needed_refs(manifest, node)
    ctr = facts.get("ctr_images") or {}
    present = ctr.get("images") if ctr.get("available") else None
    arch = (facts.get("arch") or {}).get("arch", "")
    actions = M.import_actions(manifest, refs, present, arch, node, "import images", float(settings.wait_timeout))
    if not actions:
        return Plan.noop(f"all {len(refs)} images for {', '.join(sorted(r.value for r in node.roles))} present")
    return Plan(tuple(actions))


def verify(facts: Mapping[str, Any], settings: Any, node: Node) -> list[Check]:
    manifest = facts["bundle"]
    present = (facts.get("ctr_images") or {}).get("images") or {}
    checks = []
    for ref in needed_refs(manifest, node):
        img = manifest.image(ref)
        have = present.get(img.ref)
        checks.append(Check(f"image {img.ref}", have == img.digest,
                            "present" if have == img.digest else (f"digest {have}" if have else "missing"),
                            f"provision install --only 20 (from {img.file})"))
    return checks
