"""The files the z2jh chart puts into the hub's ConfigMap (`jupyterhub_config.py`, `z2jh.py`), as the
simulator's own short stand-ins, plus `simproxy.py` (no configurable-http-proxy runs in the simulator).

What they keep from the chart (z2jh 4.2.0 files/hub/, described in shared/reference/z2jh-4.2.0-notes.md):
the values come from the Secret `hub` mounted at /usr/local/etc/jupyterhub/secret/values.yaml and are read
with `z2jh.get_config("a.b.c", default)`; the config directory is on sys.path; the hub binds :8081
(`hub_bind_url`); `hub.db.type` sqlite-pvc -> sqlite:///jupyterhub.sqlite in /srv/jupyterhub (the PVC),
sqlite-memory -> sqlite://, else `hub.db.url`; `hub.config` is loaded into `c`; `hub.templatePaths`;
`hub.extraConfig` snippets run last, sorted by key, with z2jh's get_config in scope.
What they leave out: KubeSpawner as the spawner (no user servers are started in the simulator), the
proxy (CHP) API, hub services (the idle culler), and the many defaults the chart sets on KubeSpawner.
"""

from __future__ import annotations

Z2JH_PY = '''"""Simulator stand-in for the chart's z2jh.py: read the values the chart mounted from Secret `hub`."""
import os

import yaml

_CONFIG = None


def _load_config():
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = {}
        for path in ("/usr/local/etc/jupyterhub/secret/values.yaml",
                     "/usr/local/etc/jupyterhub/existing-secret/values.yaml"):
            if os.path.exists(path):
                with open(path) as fh:
                    _CONFIG.update(yaml.safe_load(fh) or {})
    return _CONFIG


def get_config(key, default=None):
    value = _load_config()
    for level in key.split("."):
        if not isinstance(value, dict) or level not in value:
            return default
        value = value[level]
    return value
'''

JUPYTERHUB_CONFIG_PY = '''"""Simulator stand-in for the chart's jupyterhub_config.py (see tests/harness/sim/hubfiles.py)."""
import os
import sys

configuration_directory = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, configuration_directory)

from z2jh import get_config  # noqa: E402  (shadows traitlets' get_config, as in the chart)

c.JupyterHub.hub_bind_url = "http://:8081"
c.JupyterHub.bind_url = "http://127.0.0.1:8000"
c.JupyterHub.proxy_class = "simproxy.NullProxy"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"

db_type = get_config("hub.db.type")
if db_type == "sqlite-pvc":
    c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
elif db_type == "sqlite-memory":
    c.JupyterHub.db_url = "sqlite://"
elif get_config("hub.db.url"):
    c.JupyterHub.db_url = get_config("hub.db.url")

if get_config("hub.templatePaths"):
    c.JupyterHub.template_paths = get_config("hub.templatePaths")
if get_config("hub.templateVars"):
    c.JupyterHub.template_vars.update(get_config("hub.templateVars"))

for app, cfg in (get_config("hub.config") or {}).items():
    c[app].update(cfg)

for key, config_py in sorted((get_config("hub.extraConfig") or {}).items()):
    print(f"Loading extra config: {key}")
    exec(config_py)
'''

SIMPROXY_PY = '''"""No configurable-http-proxy in the simulator: routes are kept in memory."""
from jupyterhub.proxy import Proxy


class NullProxy(Proxy):
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

CONFIGMAP_FILES = {"jupyterhub_config.py": JUPYTERHUB_CONFIG_PY, "z2jh.py": Z2JH_PY, "simproxy.py": SIMPROXY_PY}

# The keys of the values the chart copies into Secret `hub` (values.yaml) for z2jh.get_config.
SECRET_VALUE_KEYS = ("Chart", "Release", "cull", "custom", "debug", "hub", "ingress", "proxy", "scheduling",
                     "singleuser")
