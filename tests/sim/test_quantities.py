"""The API stand-in gives Pod resource quantities back as the real API server does: canonical strings."""

from __future__ import annotations

import pytest

from tests.harness.sim.store import canonical_quantity


@pytest.mark.parametrize("sent, back", [(1.0, "1"), (0.5, "500m"), (2, "2"), (2000, "2k"), (0.0001, "100u"),
                                        (1073741824, "1073741824"), (4294967296.0, "4294967296"), (0, "0")])
def test_numbers_come_back_as_canonical_strings(sent, back):
    assert canonical_quantity(sent) == back
