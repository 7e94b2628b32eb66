"""The persisted node inventory (provision/roster.py): what is written reads back the same, a damaged file
is one clear error naming it, and it never holds a password."""

from __future__ import annotations

import pytest

from provision import roster
from provision.errors import ConfigError
from provision.inventory import parse_target
from provision.stage import Role

CONTROL = roster.NodeRecord("cp", "10.0.0.1", frozenset({Role.CONTROL}), added="2026-11-30T06:00:00Z")
GPU = roster.NodeRecord("gpu-1", "10.0.0.21", frozenset({Role.WORKER, Role.GPU}), parse_target("ubuntu@10.0.0.21:2222"),
                        identity="/root/.ssh/id_ed25519", labels={"lab": "a"}, added="2026-11-30T06:10:00Z")
V6 = roster.NodeRecord("npu-1", "fd00::5", frozenset({Role.WORKER, Role.NPU}), parse_target("admin@[fd00::5]"))


def test_records_read_back_the_same():
    text = roster.dump([CONTROL, GPU, V6])
    assert roster.parse(text) == [CONTROL, GPU, V6]
    assert "password" not in text.lower()
    assert roster.parse("") == []


@pytest.mark.parametrize("text, why", [
    ("nodes: [", "YAML error"),
    ("version: 2\nnodes: []\n", "expected `version: 1`"),
    ("version: 1\nnodes:\n- {name: a, address: 10.0.0.1, roles: [chef]}\n", "node 1"),
    ("version: 1\nnodes:\n- {name: a, address: 10.0.0.1, roles: [worker], ssh: {user: 'x;rm', port: 22}}\n", "node 1"),
    (("version: 1\nnodes:\n- {name: a, address: 10.0.0.1, roles: [worker]}\n- {name: a, address: 10.0.0.2, "
      "roles: [worker]}\n"), "listed twice"),
])
def test_a_damaged_file_is_one_error_naming_it(text, why):
    with pytest.raises(ConfigError) as e:
        roster.parse(text)
    assert roster.INVENTORY_FILE in str(e.value) and why in str(e.value) and e.value.hint


def test_upsert_replaces_by_name_and_keeps_the_first_added_time():
    again = roster.NodeRecord("gpu-1", "10.0.0.21", GPU.roles, GPU.target, labels={"lab": "b"})
    out = roster.upsert([CONTROL, GPU], again)
    assert [r.name for r in out] == ["cp", "gpu-1"] and out[1].labels == {"lab": "b"}
    assert out[1].added == GPU.added
    assert roster.remove(out, "gpu-1") == [CONTROL]
    assert roster.upsert([CONTROL], V6) == [CONTROL, V6]
