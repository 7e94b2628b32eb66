"""Test harness: real sshd test hosts in namespaces (hosts.py), plus extensions (simulated cluster, bundles).

Import `Harness`/`TestHost` from tests.harness.hosts; the CLI is `python -m tests.harness`.
"""
