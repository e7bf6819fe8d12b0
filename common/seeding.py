"""Random draws fixed by a seed without disturbing the rest of the process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside the block torch's global random draws (dropout, initialisations) follow ``seed``; after it,
    they continue as if the block had not run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
