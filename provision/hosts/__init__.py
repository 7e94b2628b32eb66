"""Hosts: one node each, with one interface whether it is this machine or reached over SSH."""

from provision.hosts.base import Host, Result, masked_argv

__all__ = ["Host", "Result", "masked_argv"]
