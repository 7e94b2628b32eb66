"""The one entry point hub.extraConfig calls: wires callables that Helm values cannot hold as data.

Parameters come from the hub's environment (hub.extraEnv), never from code generated at render time, so
the shipped code is the same for every site and nothing from jhub.env is ever evaluated as Python.
"""

from __future__ import annotations

import os


def native_templates_dir() -> str:
    import nativeauthenticator

    return os.path.join(os.path.dirname(nativeauthenticator.__file__), "templates")


def configure(c, environ=None) -> None:
    """Called as configure(c) at the end of the chart's jupyterhub_config.py."""
    env = os.environ if environ is None else environ
    from .events import keep_spawn_events
    from .pods import modify_pod_hook

    c.KubeSpawner.modify_pod_hook = modify_pod_hook
    c.KubeSpawner.post_stop_hook = keep_spawn_events  # events outlive their 1 h TTL for `provision diag spawn`
    if env.get("PROVISION_NATIVE_TEMPLATES") == "1":
        # NativeAuthenticator's page.html adds "Authorize users" / "Change password" to the menu (P19).
        paths = list(c.JupyterHub.template_paths) if "template_paths" in c.JupyterHub else []
        c.JupyterHub.template_paths = paths + [native_templates_dir()]
    portal = env.get("PROVISION_USAGE_PORTAL_URL", "")
    if portal:
        from .usage import QUOTA_FORM_TEMPLATE, usage_limited_profiles

        static = list(c.KubeSpawner.profile_list) if "profile_list" in c.KubeSpawner else []
        c.KubeSpawner.profile_list = usage_limited_profiles(
            static, portal, token=portal_token(env.get("PROVISION_USAGE_PORTAL_TOKEN_KEY", "")),
            fail_open=env.get("PROVISION_USAGE_LIMIT_FAIL_MODE") == "open")
        if "profile_form_template" not in c.KubeSpawner:
            c.KubeSpawner.profile_form_template = QUOTA_FORM_TEMPLATE


def portal_token(key: str) -> str:
    """The portal's bearer token from the hub's own k8s Secret (z2jh mounts each key as a file), never from
    the environment: a Deployment's env is readable by anyone who may read the Deployment."""
    if not key:
        return ""
    try:
        from z2jh import get_secret_value
    except ImportError:  # outside the chart's image (tests that load this module directly)
        return ""
    return (get_secret_value(key, "") or "").strip()
