"""`python -m tests.harness up ... --sim [--gpu NODE=COUNTxMODEL] [--npu NODE=COUNTxMODEL] [--ib NODE] [--firewalld NODE]`."""

from __future__ import annotations

import argparse


def _add(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated cluster (tests/harness/sim)")
    g.add_argument("--sim", action="store_true", help="install snap/microk8s/systemctl/... stand-ins")
    g.add_argument("--gpu", action="append", default=[], metavar="NODE=COUNTxMODEL",
                   help="GPUs on a node, e.g. node2=8xH100 (node = host name or nodeN, 1-based)")
    g.add_argument("--npu", action="append", default=[], metavar="NODE=COUNTxMODEL",
                   help="Ascend NPUs on a node, e.g. node3=8x910B3")
    g.add_argument("--ib", action="append", default=[], metavar="NODE",
                   help="give NODE an InfiniBand HCA (Mellanox PCI device, port ib0) for ENABLE_IB")
    g.add_argument("--firewalld", action="append", default=[], metavar="NODE",
                   help="give NODE firewall-cmd instead of ufw")
    g.add_argument("--sim-timing", default="fast", metavar="fast|real[:FACTOR]",
                   help="apply MicroK8s' real delays (snap install minutes, API after containerd, leave 20 s, "
                        "control-plane join) scaled by FACTOR, e.g. real:0.1; default fast")


def _handle(args: argparse.Namespace, harness) -> None:
    if not args.sim:
        if args.gpu or args.npu or args.ib or args.firewalld or args.sim_timing != "fast":
            raise SystemExit("error: --gpu/--npu/--ib/--firewalld/--sim-timing need --sim")
        return
    from .install import enable
    from .spec import SimSpec
    spec = SimSpec()
    for text in args.gpu:
        ref, count, model = SimSpec.parse_device(text)
        spec.gpus[ref] = (count, model)
    for text in args.npu:
        ref, count, model = SimSpec.parse_device(text)
        spec.npus[ref] = (count, model)
    spec.firewalld = set(args.firewalld)
    spec.ib = set(args.ib)
    try:
        spec.timing = SimSpec.parse_timing(args.sim_timing)
    except ValueError as e:
        raise SystemExit(f"error: --sim-timing: {e}") from None
    enable(harness, spec)


def register(cli) -> None:
    cli.up_option(_add, _handle)
