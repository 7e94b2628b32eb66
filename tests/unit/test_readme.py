"""The README's test command is the one CI runs, and it works in a root shell that has no sudo."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_first_test_command_is_what_ci_runs_and_needs_no_sudo():
    block = re.search(r"```bash\n(.*?)```", _section("Run the tests"), re.DOTALL).group(1)
    first = block.splitlines()[0].split("#")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert first == "bash scripts/test.sh"  # a root shell without sudo can paste it
    assert "bash scripts/test.sh" in ci
    assert "as root" in _section("Run the tests")


def test_developer_commands_do_not_require_sudo():
    """Harness and benchmark commands run as root; `sudo` only inside the simulated node's own shell."""
    for title in ("Benchmarks", "For developers: test hosts"):
        for block in re.findall(r"```bash\n(.*?)```", _section(title), re.DOTALL):
            for line in block.splitlines():
                assert not line.startswith("sudo "), (title, line)
