"""pyproject.toml's runtime dependencies are exactly what provision/ and stages/ import: nothing declared
and unused (an install pulls it onto every admin machine for nothing), nothing used and undeclared.

The in-hub code (provision/jupyterhub/hub/) runs inside the hub image, not in provision's environment, so
its imports (tornado, traitlets, jupyterhub, ...) are not provision's dependencies.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
IN_HUB = ROOT / "provision" / "jupyterhub" / "hub"


def declared() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9._-]+", d).group(0) for d in deps]


def imported() -> set[str]:
    """Top-level names of every absolute import in provision/ and stages/ (in-hub code aside)."""
    names: set[str] = set()
    for f in [*(ROOT / "provision").rglob("*.py"), *(ROOT / "stages").rglob("*.py")]:
        if IN_HUB in f.parents:
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def import_names() -> dict[str, set[str]]:
    """distribution (normalized) → the top-level modules it installs, from the installed metadata
    (pyyaml → yaml), so the mapping is the real one, not a table kept by hand."""
    out: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for d in dists:
            out.setdefault(normalize(d), set()).add(module)
    return out


def test_every_declared_dependency_is_imported():
    mapping, used = import_names(), imported()
    unused = [d for d in declared() if not (mapping.get(normalize(d), {normalize(d).replace("-", "_")}) & used)]
    assert unused == [], f"declared in pyproject.toml but never imported by provision/ or stages/: {unused}"


def test_every_third_party_import_is_declared():
    mapping = import_names()
    provided = set().union(*(mapping.get(normalize(d), set()) for d in declared()))
    ours = {"provision", "stages", "__future__"}
    third_party = {m for m in imported() if m not in sys.stdlib_module_names and m not in ours}
    assert third_party - provided == set(), "imported but not in [project] dependencies"


def test_fabric_is_gone():
    """SSH is plain paramiko (provision/hosts/ssh.py says why), so fabric is not installed with provision."""
    assert "fabric" not in {normalize(d) for d in declared()}
