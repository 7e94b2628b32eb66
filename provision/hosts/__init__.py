"""Hosts: one node each, with one interface whether it is this machine or reached over SSH.

LocalHost and SSHHost load lazily (SSHHost needs paramiko), so importing this package stays cheap.
"""

from provision.hosts.base import Host, Result, masked_argv

__all__ = ["Host", "HostStats", "LocalHost", "Result", "SSHHost", "masked_argv"]


def __getattr__(name: str):
    if name == "LocalHost":
        from provision.hosts.local import LocalHost

        return LocalHost
    if name == "SSHHost":
        from provision.hosts.ssh import SSHHost

        return SSHHost
    if name == "HostStats":
        from provision.hosts.common import HostStats

        return HostStats
    raise AttributeError(name)
