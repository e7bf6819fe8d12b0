"""DAREx-q: DARE's seeded mask with the kept values rescaled by 1/q, q fitted to preserve layer outputs."""

from __future__ import annotations

import torch

from fedelta.common.config import PruneSettings
from fedelta.common.delta import Entry
from fedelta.common.pruning.dare import dare_positions, rescaled
from fedelta.common.pruning.registry import PruneRequest, pruner


def output_preserving_q(kept: torch.Tensor, delta: torch.Tensor, inputs: torch.Tensor) -> float | None:
    """q minimising ||a / q - b||^2 with a = X (m*delta)^T, b = X delta^T: 1/q = <a,b> / <a,a>.

    ``None`` when the fit is undefined (nothing kept, or <a,b> <= 0).
    """
    x = inputs.to(torch.float32)
    a = (x @ kept.to(torch.float32).T).double()
    b = (x @ delta.to(torch.float32).T).double()
    aa, ab = float((a * a).sum()), float((a * b).sum())
    if aa <= 0.0 or ab <= 0.0:
        return None
    return aa / ab


def labelled(settings: PruneSettings) -> bool:
    """With ``prune.q-mode = labelled``, one global q is chosen on a local validation split."""
    return settings.q_mode == "labelled"


@pruner(
    "darex-q",
    summary="DARE's seeded mask, kept values rescaled by 1/q with q fitted per layer on captured inputs "
    "(prune.q-mode = unlabelled) or one q chosen on local validation accuracy (labelled); no indices sent; "
    "tensors without inputs use DARE's 1/(1-p)",
    reference="Deng et al. 2024, DARE the Extreme: Revisiting Delta-Parameter Pruning, arXiv:2410.09344",
    rescales=True,
    needs_inputs=True,
    needs_labels=labelled,
)
def darex_q(name: str, delta: torch.Tensor, request: PruneRequest) -> Entry:
    positions = dare_positions(name, delta, request)
    q = request.keep
    if request.calibration is not None and request.calibration.q is not None:
        q = request.calibration.q
    elif (inputs := request.inputs_for(name, delta)) is not None:
        kept = torch.zeros(delta.numel(), dtype=torch.float32)
        kept[positions] = delta.reshape(-1)[positions].to(torch.float32)
        fitted = output_preserving_q(kept.reshape(delta.shape), delta, inputs)
        q = fitted if fitted is not None else q
    request.stats[name] = q
    return rescaled(name, delta, request, positions, q)
