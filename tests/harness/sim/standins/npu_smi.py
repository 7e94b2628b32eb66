"""`npu-smi info` stand-in on NPU hosts, in the 910B layout of ascend.md §6 (npu-smi 24.1.rc1)."""

from __future__ import annotations

import sys

VERSION = "24.1.rc1"


def main(argv: list[str]) -> int:
    from .. import faults
    from ..state import host_config
    faults.apply_command_fault(["npu-smi"] + argv)
    cfg = host_config()
    n, model = int(cfg.get("npus", 0)), cfg.get("npu_model", "910B3")
    if not argv or argv[0] != "info":
        print("Usage: npu-smi info [-l] | npu-smi info watch")
        return 1
    if "-l" in argv:
        print(f"\tTotal Count                    : {n}\n")
        for i in range(n):
            print(f"\tNPU ID                         : {i}\n\tChip Count                     : 1\n")
        return 0
    bar = "+---------------------------+---------------+----------------------------------------------------+"
    dbl = "+===========================+===============+====================================================+"
    print("+--------------------------------------------------------------------------------------------------------+")
    print(f"| npu-smi {VERSION:<26}Version: {VERSION:<58}|")
    print(bar)
    print("| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|")
    print("| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |")
    print(dbl)
    for i in range(n):
        print(f"| {i:<5} {model:<19} | OK            | 101.8       43                0    / 0             |")
        print(f"| 0                         | 0000:{0xC1 + i:02X}:00.0  | 0           0    / 0          3318 / 65536         |")
        print(dbl)
    print("+---------------------------+---------------+----------------------------------------------------+")
    print("| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |")
    print(dbl)
    for i in range(n):
        print(f"| No running processes found in NPU {i:<65}|")
        print(dbl)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
