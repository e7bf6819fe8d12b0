"""Shared fixtures: tiny models built from a config, small settings, temp folders."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from fedelta.common.config import Settings  # noqa: E402

TINY = {
    "model.path": "tiny-bert",
    "federation.num-sites": 2,
    "rounds": 1,
    "local.steps": 2,
    "local.batch-size": 4,
    "local.lr": 1e-3,
    "data.test-size": 32,
    "data.max-site-examples": 32,
    "model.max-length": 16,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that start Flower engines, clusters or processes (marked ``slow``) run first, each kept whole:
    under ``make test``'s two workers the long ones start early and the short ones fill in around them."""
    slow_modules = {item.module for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.module not in slow_modules)


@pytest.fixture
def tiny_settings(tmp_path) -> Settings:
    return Settings().with_overrides({**TINY, "output.dir": str(tmp_path / "out")})

from console_harness import live_console  # noqa: E402,F401  (the session's live console, for test_console_*)
