import pytest
import torch

from fedelta.common.config import LocalSettings, OptimizerSettings
from fedelta.common.optimizers import AdamR, make_optimizer


def _grads(step: int) -> torch.Tensor:
    return torch.sin(torch.arange(6, dtype=torch.float32) + step)


def test_adamr_is_adam_plus_decoupled_decay_toward_the_start():
    start = torch.linspace(-1, 1, 6)
    ours = torch.nn.Parameter(start.clone())
    reference = torch.nn.Parameter(start.clone())
    adamr = AdamR([{"params": [ours]}], lr=0.1, decay=0.5)
    adam = torch.optim.Adam([reference], lr=0.1)
    for step in range(4):
        offset = reference.detach() - start
        ours.grad, reference.grad = _grads(step), _grads(step)
        adamr.step()
        adam.step()
        with torch.no_grad():
            reference.sub_(offset, alpha=0.1 * 0.5)
        torch.testing.assert_close(ours.detach(), reference.detach(), rtol=0, atol=1e-7)


def test_adamr_anchored_elsewhere_decays_toward_that_anchor():
    param = torch.nn.Parameter(torch.ones(4))
    adamr = AdamR([{"params": [param]}], lr=0.1, decay=0.5)
    adamr.anchor_to({param: torch.full((4,), 3.0)})
    param.grad = torch.zeros(4)  # Adam's own step is then exactly zero
    adamr.step()
    torch.testing.assert_close(param.detach(), torch.full((4,), 1.0 - 0.1 * 0.5 * (1.0 - 3.0)), rtol=0, atol=1e-7)
    stranger = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(KeyError, match="does not train"):
        adamr.anchor_to({stranger: torch.zeros(1)})


def test_adamr_keeps_the_delta_smaller_than_adamw():
    sizes = []
    for name in ("adamw", "adamr"):
        param = torch.nn.Parameter(torch.zeros(100))
        model = torch.nn.Module()
        model.register_parameter("w", param)
        optimizer = make_optimizer(model, [param], [], LocalSettings(lr=0.05),
                                   OptimizerSettings(name=name, lambda_=2.0))
        for step in range(30):
            param.grad = torch.randn(100, generator=torch.Generator().manual_seed(step)) + 0.3
            optimizer.step()
        sizes.append(param.detach().norm().item())
    assert sizes[1] < 0.8 * sizes[0]


def test_head_gets_its_own_learning_rate():
    model = torch.nn.Sequential()
    model.add_module("body", torch.nn.Linear(3, 3))
    model.add_module("classifier", torch.nn.Linear(3, 2))
    optimizer = make_optimizer(model, list(model.parameters()), ["classifier.weight", "classifier.bias"],
                               LocalSettings(lr=1e-4, head_lr=1e-2), OptimizerSettings())
    rates = sorted(group["lr"] for group in optimizer.param_groups)
    assert rates == [1e-4, 1e-2]
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]
