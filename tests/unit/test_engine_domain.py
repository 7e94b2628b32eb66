"""The engine (runner, stage, hosts, facts, bundle, images, console, lock, inventory) knows nothing of
JupyterHub: it never imports the domain package and never reads a JupyterHub setting. The domain lives
in provision/jupyterhub/ and stages/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "provision"
ENGINE = ["runner.py", "stage.py", "facts.py", "bundle.py", "images.py", "console.py", "lock.py",
          "inventory.py", "errors.py", *(f"hosts/{p.name}" for p in (PKG / "hosts").glob("*.py"))]
DOMAIN_SETTINGS = re.compile(r"\.(z2jh_\w+|singleuser_\w+|auth_mode|native_\w+|admin_users\w*|hub_\w+|"
                             r"use_gpu_operator|gpu_operator_version|spawner_\w+|workshop_\w+)\b")


def _imports(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_engine_never_imports_the_domain_or_the_stages():
    for rel in ENGINE:
        tree = ast.parse((PKG / rel).read_text())
        # stage.discover() imports the `stages` package to find sNN_*.py; no engine module imports a stage
        bad = {m for m in _imports(tree) if m.startswith(("provision.jupyterhub", "stages."))}
        assert not bad, f"provision/{rel} imports {sorted(bad)}"


def test_engine_reads_no_jupyterhub_setting():
    for rel in ENGINE:
        code = ast.unparse(ast.parse((PKG / rel).read_text()))  # without comments
        found = DOMAIN_SETTINGS.findall(code)
        assert not found, f"provision/{rel} reads {sorted(set(found))}"
