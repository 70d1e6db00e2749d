"""Fixtures of the multi-host tests: `hosts` (network namespaces on a bridge, tests/hosts/
netns.py) and, from tests/state, `processes` and `network` (a coordinator and workers as
processes, on this test's PostgreSQL database and Redis prefix)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require
from tests.state.conftest import network, processes  # noqa: F401 (fixtures used here)

from .netns import Hosts, netns_available


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """A bridge and the namespaces the test adds to it; all deleted at teardown. Ask for it
    before `network` so that the processes in it are stopped before their hosts go."""
    require("network namespaces", *netns_available())
    with Hosts() as made:
        yield made
