"""Layer-internal update: normalization weights and every bias (BitFit-like), plus the task head."""

import torch

from fedelta.common.methods.registry import METHODS, FineTuningMethod, MethodContext


def is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm, RMSNorm and their architecture-specific variants (by class name)."""
    return isinstance(module, torch.nn.LayerNorm | torch.nn.RMSNorm) or "norm" in type(module).__name__.lower()


def norm_and_bias_names(model: torch.nn.Module) -> list[str]:
    """Every parameter of a normalization module, and every parameter named ``bias``."""
    names = []
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if is_norm(module) or param_name == "bias":
                names.append(f"{module_name}.{param_name}" if module_name else param_name)
    return names


class LnBias(FineTuningMethod):
    def touched(self, model: torch.nn.Module, context: MethodContext) -> list[str]:
        return sorted(set(norm_and_bias_names(model)) | set(context.head))


METHODS.register(
    "lnbias",
    summary="train normalization weights and all biases (+ the new task head)",
    reference="Zaken et al. 2022, BitFit; Zimmer et al. 2023, PERP",
)(LnBias())
