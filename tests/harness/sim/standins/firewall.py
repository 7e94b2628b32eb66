"""`ufw` and `firewall-cmd` stand-ins: rules kept in a JSON file, status output in the tools' formats.
Nothing touches the host's real netfilter (the harness owns the network)."""

from __future__ import annotations

import sys

from .. import paths
from ..state import read_json, updating


def ufw(argv: list[str]) -> int:
    from .. import faults
    faults.apply_command_fault(["ufw"] + argv)
    st = read_json(paths.SIM_FIREWALL, {}) or {}
    ufw_st = st.get("ufw", {"active": False, "rules": []})
    args = [a for a in argv if a not in ("--force",)]
    if not args:
        print("ERROR: not enough args")
        return 1
    cmd = args[0]
    if cmd == "status":
        if not ufw_st["active"]:
            print("Status: inactive")
            return 0
        print("Status: active")
        if ufw_st["rules"]:
            print("\nTo                         Action      From\n--                         ------      ----")
            for r in ufw_st["rules"]:
                print(f"{r['to']:<26} {r['action'].upper():<11} {r.get('from', 'Anywhere')}")
        return 0
    with updating(paths.SIM_FIREWALL, {}) as s:
        u = s.setdefault("ufw", {"active": False, "rules": []})
        if cmd == "enable":
            u["active"] = True
            print("Firewall is active and enabled on system startup")
        elif cmd == "disable":
            u["active"] = False
            print("Firewall stopped and disabled on system startup")
        elif cmd in ("allow", "deny", "reject", "limit"):
            rest = args[1:]
            rule = {"action": cmd, "to": " ".join(rest)}
            if "from" in rest:
                i = rest.index("from")
                rule = {"action": cmd, "from": rest[i + 1], "to": " ".join(
                    rest[rest.index("port") + 1:rest.index("port") + 2]) if "port" in rest else "Anywhere"}
            if rule in u["rules"]:
                print("Skipping adding existing rule")
            else:
                u["rules"].append(rule)
                print("Rule added")
        elif cmd == "delete":
            rule = {"action": args[1], "to": " ".join(args[2:])}
            if rule in u["rules"]:
                u["rules"].remove(rule)
                print("Rule deleted")
            else:
                print("Could not delete non-existent rule")
        elif cmd == "reload":
            print("Firewall reloaded" if u["active"] else "Firewall not enabled (skipping reload)")
        else:
            print("ERROR: Invalid syntax")
            return 1
    return 0


def firewall_cmd(argv: list[str]) -> int:
    from .. import faults
    faults.apply_command_fault(["firewall-cmd"] + argv)
    permanent = "--permanent" in argv
    zone = next((a.split("=", 1)[1] for a in argv if a.startswith("--zone=")), "public")
    with updating(paths.SIM_FIREWALL, {}) as s:
        fw = s.setdefault("firewalld", {"running": True, "runtime": {}, "permanent": {}})
        if "--state" in argv:
            print("running" if fw["running"] else "not running")
            return 0 if fw["running"] else 252
        if "--reload" in argv:
            fw["runtime"] = {z: dict(v) for z, v in fw["permanent"].items()}
            print("success")
            return 0
        layer = fw["permanent" if permanent else "runtime"].setdefault(zone, {"ports": [], "services": []})
        for a in argv:
            for flag, key in (("--add-port=", "ports"), ("--add-service=", "services")):
                if a.startswith(flag):
                    value = a.split("=", 1)[1]
                    if value in layer[key]:
                        print(f"Warning: ALREADY_ENABLED: {value}")
                    else:
                        layer[key].append(value)
                    print("success")
                    return 0
            for flag, key in (("--remove-port=", "ports"), ("--remove-service=", "services")):
                if a.startswith(flag):
                    value = a.split("=", 1)[1]
                    if value in layer[key]:
                        layer[key].remove(value)
                    else:
                        print(f"Warning: NOT_ENABLED: {value}")
                    print("success")
                    return 0
            if a == "--list-ports":
                print(" ".join(layer["ports"]))
                return 0
            if a == "--list-services":
                print(" ".join(layer["services"]))
                return 0
            if a.startswith("--query-port="):
                ok = a.split("=", 1)[1] in layer["ports"]
                print("yes" if ok else "no")
                return 0 if ok else 1
    print("usage: see firewall-cmd --help")
    return 2


if __name__ == "__main__":
    sys.exit(ufw(sys.argv[1:]))
