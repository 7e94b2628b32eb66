"""`systemctl` stand-in (see sim/systemd.py)."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from .. import faults, systemd
    faults.apply_command_fault(["systemctl"] + argv)
    return systemd.main(argv)
