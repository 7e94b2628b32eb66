"""provision: an offline installer for JupyterHub on MicroK8s."""

__version__ = "0.1.0"
