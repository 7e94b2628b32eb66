"""`npu-smi info` stand-in on NPU hosts, in the 910B layout of ascend.md §6 (npu-smi 24.1.rc1)."""

from __future__ import annotations

import sys

VERSION = "24.1.rc1"


def main(argv: list[str]) -> int:
    from .. import faults
    from ..state import host_config
    faults.apply_command_fault(["npu-smi"] + argv)
    cfg = host_config()
    code, text = render(list(range(int(cfg.get("npus", 0)))), cfg.get("npu_model", "910B3"), argv)
    print(text, end="")
    return code


def render(ids: list[int], model: str, argv: list[str]) -> tuple[int, str]:
    """What npu-smi prints for these NPUs (a container that was given some of them sees only those)."""
    n = len(ids)
    if not argv or argv[0] != "info":
        return 1, "Usage: npu-smi info [-l] | npu-smi info watch\n"
    if "-l" in argv:
        return 0, f"\tTotal Count                    : {n}\n\n" + "".join(
            f"\tNPU ID                         : {i}\n\tChip Count                     : 1\n\n" for i in ids)
    bar = "+---------------------------+---------------+----------------------------------------------------+"
    dbl = "+===========================+===============+====================================================+"
    out = ["+--------------------------------------------------------------------------------------------------------+",
           f"| npu-smi {VERSION:<26}Version: {VERSION:<58}|", bar,
           "| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|",
           "| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |", dbl]
    for i in ids:
        out += [f"| {i:<5} {model:<19} | OK            | 101.8       43                0    / 0             |",
                f"| 0                         | 0000:{0xC1 + i:02X}:00.0  | 0           0    / 0          3318 / 65536         |",
                dbl]
    out += [bar, "| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |", dbl]
    for i in ids:
        out += [f"| No running processes found in NPU {i:<65}|", dbl]
    return 0, "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
