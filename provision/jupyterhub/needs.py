"""What the JupyterHub deployment needs from the offline bundle, for `bundle verify` and preflight.

The engine's bundle check knows MicroK8s' own needs; these are ours: the single-user image on every
node, the Zero to JupyterHub chart at Z2JH_CHART_VERSION, and the GPU Operator chart when GPUs are on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provision.bundle import Needs
    from provision.config import Settings


def bundle_needs(settings: Settings) -> Needs:
    from provision.bundle import EVERY_NODE, Needs, Requirement
    from provision.images import normalize_ref

    images = (Requirement(normalize_ref(settings.singleuser_image), frozenset(EVERY_NODE), "SINGLEUSER_IMAGE"),)
    charts = [("jupyterhub", settings.z2jh_chart_version, "Z2JH_CHART_VERSION")]
    if settings.use_gpu_operator:
        charts.append(("gpu-operator", settings.gpu_operator_version, "GPU_OPERATOR_VERSION"))
    return Needs(images, tuple(charts))
