"""Pruners: how a site sparsifies each tensor of its delta before upload.

A pruner is a function ``(name, delta, request) -> Entry`` registered in
:data:`PRUNERS` with its reference and its traits (:class:`Pruner`: whether it
rescales, needs layer inputs, needs labels); importing this package registers
them all. Activation-aware pruners read layer inputs from the request's
:class:`Calibration`.
"""

from fedelta.common.pruning.registry import PRUNERS, Calibration, PruneRequest, Pruner, prune_delta
from fedelta.common.pruning import dare, darex_q, importance, magnitude, none  # noqa: F401  (registration)

__all__ = ["PRUNERS", "Calibration", "PruneRequest", "Pruner", "prune_delta"]
