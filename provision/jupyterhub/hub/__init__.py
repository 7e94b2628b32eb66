"""Code that runs inside the JupyterHub pod (shipped there as `provision_hub` through hub.extraFiles).

These modules import only what the hub image has (the standard library, tornado, traitlets, jupyterhub,
kubespawner) and each other by relative import, so the same files work as `provision.jupyterhub.hub.*` in our tests
and as `provision_hub.*` in the hub.
"""
