"""Which addresses ray_session treats as a loopback-only cluster (the node-failure test runs the real path)."""

import pytest

from lathe.platform.runtime import _is_loopback


@pytest.mark.parametrize("address,loopback", [
    ("127.0.0.1:6379", True), ("localhost:6379", True), ("127.0.1.1:1234", True),
    ("10.0.0.5:6379", False), ("head.cluster:6379", False),
    ("ray://127.0.0.1:10001", False),  # a Ray Client driver runs on the cluster side
])
def test_loopback_addresses_are_recognised(address, loopback):
    assert _is_loopback(address) is loopback
