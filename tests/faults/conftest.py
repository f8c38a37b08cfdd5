"""Fault-injection suite set-up: slow trials run only when asked (`make test-slow`: -m "slow or not slow")."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a -m expression, leave out tests marked slow (the many-trial fault runs)."""
    if config.getoption("markexpr", ""):
        return
    keep = [it for it in items if it.get_closest_marker("slow") is None]
    dropped = [it for it in items if it.get_closest_marker("slow") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
