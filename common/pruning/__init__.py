"""Pruners: how a site sparsifies each tensor of its delta before upload.

A pruner is a function ``(name, delta, request) -> Entry`` registered in
:data:`PRUNERS` with its reference; importing this package registers them all.
"""

from common.pruning.registry import PRUNERS, PruneRequest, prune_delta
from common.pruning import dare, magnitude, none  # noqa: F401  (registration)

__all__ = ["PRUNERS", "PruneRequest", "prune_delta"]
