"""A real JupyterHub process on loopback, configured from our rendered Helm values the way the z2jh chart's
jupyterhub_config.py applies them (hub.extraFiles on sys.path, hub.extraEnv, hub.config, hub.extraConfig).

What cannot run here is left out, not faked in the hub itself: there is no Kubernetes, so the spawner stays
JupyterHub's default (no server is ever started), and configurable-http-proxy is replaced by an in-memory
route table because the tests talk to the hub's own port directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

Z2JH_ETC = "/usr/local/etc/jupyterhub"

CONFIG = '''
import json, os, sys
c = get_config()  # noqa
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "etc"))   # z2jh: the config directory is on sys.path
sys.path.insert(0, HERE)
values = json.load(open(os.path.join(HERE, "values.json")))
hub = values.get("hub", {})
c.JupyterHub.proxy_class = "nullproxy.NullProxy"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:%(port)d"
c.JupyterHub.bind_url = "http://127.0.0.1:%(proxy_port)d"
c.JupyterHub.db_url = "sqlite:///" + os.path.join(HERE, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(HERE, "cookie_secret")
c.JupyterHub.cleanup_servers = False
if hub.get("templatePaths"):
    c.JupyterHub.template_paths = [p.replace("%(etc)s", os.path.join(HERE, "etc")) for p in hub["templatePaths"]]
for app, cfg in hub.get("config", {}).items():
    c[app].update(cfg)
for key, code in sorted(hub.get("extraConfig", {}).items()):
    exec(code)
'''

NULLPROXY = '''
from jupyterhub.proxy import Proxy


class NullProxy(Proxy):
    """configurable-http-proxy stand-in: the tests call the hub's port directly."""

    should_start = False
    _routes = {}

    async def start(self):
        pass

    async def stop(self):
        pass

    async def add_route(self, routespec, target, data):
        self._routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec):
        self._routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self._routes)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    """Start with start(), stop with stop() (by PID); `url` is http://127.0.0.1:PORT/hub."""

    def __init__(self, workdir: Path, values: dict, env: dict | None = None):
        self.dir = workdir
        self.values = values
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hub"
        self.proc: subprocess.Popen | None = None

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc"
        for spec in self.values.get("hub", {}).get("extraFiles", {}).values():
            path = spec["mountPath"]
            assert path.startswith(Z2JH_ETC + "/"), path
            dest = etc / path[len(Z2JH_ETC) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            if "stringData" in spec:
                dest.write_text(spec["stringData"])
            else:
                import base64

                dest.write_bytes(base64.b64decode(spec["binaryData"]))
        values = json.loads(json.dumps(self.values).replace(Z2JH_ETC, "%(etc)s"))
        (self.dir / "values.json").write_text(json.dumps(values))
        (self.dir / "nullproxy.py").write_text(NULLPROXY)
        (self.dir / "jupyterhub_config.py").write_text(
            CONFIG % {"port": self.port, "proxy_port": free_port(), "etc": "%(etc)s"})

    def start(self, timeout: float = 60) -> HubProcess:
        self._write()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "PROVISION_"))}
        env.update({k: str(v) for k, v in self.values.get("hub", {}).get("extraEnv", {}).items()})
        env.update(self.env)
        self.log = open(self.dir / "hub.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", "jupyterhub_config.py"],
                                     cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"hub did not answer in {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return (self.dir / "hub.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "log", None):
            self.log.close()
