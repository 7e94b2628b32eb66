"""`python -m tests.harness up|down|status ...`: test hosts for manual runs, benchmarks and other tools.

Extension point: COMMANDS maps a subcommand to (add_arguments, run). Optional extension modules
(EXTENSIONS, e.g. tests.harness.sim for `--sim`, tests.harness.bundle for a `bundle` subcommand) are
imported when present and may define
    register(cli: HarnessCLI) -> None
to add subcommands (cli.command(...)) or options for `up` (cli.up_option(...)), whose handler gets
the parsed args and the Harness before `up` and may append to harness.post_up_hooks / pre_boot_hooks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

EXTENSIONS = ("tests.harness.sim", "tests.harness.bundle", "tests.harness.tools")

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
UpHandler = Callable[[argparse.Namespace, object], None]  # (args, harness) before up()


@dataclass
class HarnessCLI:
    commands: dict[str, tuple[str, AddArgs, Run]] = field(default_factory=dict)
    up_options: list[tuple[AddArgs, UpHandler]] = field(default_factory=list)

    def command(self, name: str, help: str, add_arguments: AddArgs, run: Run) -> None:
        self.commands[name] = (help, add_arguments, run)

    def up_option(self, add_arguments: AddArgs, handler: UpHandler) -> None:
        self.up_options.append((add_arguments, handler))


CLI = HarnessCLI()


def _up_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="how many hosts (default 3)")
    p.add_argument("--dir", required=True, help="state directory (keys, known_hosts, harness.json)")
    p.add_argument("--ubuntu", choices=["22.04", "24.04"], default="24.04", help="os-release to show")
    p.add_argument("--user", default="ubuntu", help="login user (root: no extra user)")
    p.add_argument("--sudo", choices=["nopasswd", "password", "none"], default="nopasswd")
    p.add_argument("--password-auth", action="store_true", help="allow SSH password login")
    p.add_argument("--fresh-host-keys", action="store_true", help="new host keys instead of stable ones")
    for add, _ in CLI.up_options:
        add(p)


def _up(args: argparse.Namespace) -> int:
    from tests.harness.hosts import Harness

    harness = Harness(args.dir)
    for _, handler in CLI.up_options:
        handler(args, harness)
    hosts = harness.up(args.nodes, ubuntu=args.ubuntu, user=args.user, sudo=args.sudo,
                       password_auth=args.password_auth,
                       host_keys="fresh" if args.fresh_host_keys else "stable")
    nodes = []
    for h in hosts:
        node = h.public()
        if h.password:  # test-only credential, needed to use --sudo password / --password-auth hosts
            node["password"] = h.password
        nodes.append(node)
    print(json.dumps({"nodes": nodes}, indent=2))
    return 0


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True)


def _down(args: argparse.Namespace) -> int:
    from tests.harness.hosts import Harness

    Harness(args.dir).down()
    return 0


def _status(args: argparse.Namespace) -> int:
    from tests.harness.hosts import Harness, _alive

    h = Harness(args.dir)
    out = {"id": h.id, "subnet": h.subnet, "nodes": [dict(x.public(), running=_alive(x.init_pid),
                                                          init_pid=x.init_pid) for x in h.hosts]}
    print(json.dumps(out, indent=2))
    return 0


def _gc(args: argparse.Namespace) -> int:
    from tests.harness.hosts import collect_garbage

    for d in collect_garbage():
        print(f"removed the test hosts of {d}")
    return 0


CLI.command("up", "start test hosts; prints JSON once every sshd answers", _up_args, _up)
CLI.command("down", "remove every host, link, netns and process of a --dir", _dir_arg, _down)
CLI.command("status", "show the hosts of a --dir", _dir_arg, _status)
CLI.command("gc", "remove harnesses whose test run died (killed pytest)", lambda p: None, _gc)


def _load_extensions() -> None:
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # extension not written (yet)
            raise
        register = getattr(module, "register", None)
        if register is not None:
            register(CLI)


def main(argv: list[str] | None = None) -> int:
    _load_extensions()
    parser = argparse.ArgumentParser(prog="python -m tests.harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in CLI.commands.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    from tests.harness.hosts import HarnessUnavailable

    try:
        return CLI.commands[args.command][2](args)
    except HarnessUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
