"""Which tensors each method trains, and HiWi's adapter on a bias as wide as MiniLM's."""

import pytest
import torch

from fedelta.common.delta import model_params
from fedelta.common.config import MethodSettings
from fedelta.common.methods import METHODS, MethodContext
from fedelta.common.model import load_model


@pytest.mark.parametrize("kind", ["tiny-bert", "tiny-llama"])
def test_full_touches_every_parameter(kind):
    bundle = load_model(kind, num_labels=2, seed=0)
    attachment = METHODS.get("full").attach(bundle.model, MethodContext(MethodSettings(), bundle.head))
    assert attachment.touched == sorted(model_params(bundle.model))
    assert len(attachment.trainable) == len(attachment.touched)


@pytest.mark.parametrize("kind", ["tiny-bert", "tiny-llama"])
def test_lnbias_touches_norms_biases_and_head_only(kind):
    bundle = load_model(kind, num_labels=2, seed=0)
    attachment = METHODS.get("lnbias").attach(bundle.model, MethodContext(MethodSettings(), bundle.head))
    touched = set(attachment.touched)
    assert set(bundle.head) <= touched
    for name in touched - set(bundle.head):
        assert name.endswith("bias") or "norm" in name.lower(), name
    norms = [n for n in model_params(bundle.model) if "norm" in n.lower()]
    assert norms and set(norms) <= touched
    frozen = [n for n, p in bundle.model.named_parameters() if not p.requires_grad]
    assert set(frozen) == set(model_params(bundle.model)) - touched
    total = sum(p.numel() for p in bundle.model.parameters())
    assert sum(p.numel() for p in attachment.trainable) < 0.05 * total


def test_version_zero_is_reproducible():
    from fedelta.common.delta import state_hash

    first = load_model("tiny-bert", num_labels=2, seed=3)
    second = load_model("tiny-bert", num_labels=2, seed=3)
    assert state_hash(model_params(first.model)) == state_hash(model_params(second.model))


@pytest.mark.parametrize("width", [64, 1536])
def test_hiwi_fits_a_bias_shift_whatever_the_bias_width(width):
    """Adam at lr 3e-2 on a 1536-wide bias (MiniLM's FFN) must neither saturate nor blow up the adapter.

    Held as a plain A, each step moved every hidden unit P A by lr * sum|P|, so the
    units ran off within a few steps: gelu went to zero and P' stayed P.
    """
    from fedelta.common.methods.hiwi import HiWiAdapter

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(width, generator=gen) * 0.1
    shift = torch.randn(width, generator=gen) * 0.05
    adapter = HiWiAdapter(base.shape, 8, gen)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=3e-2)
    start = float(shift.pow(2).sum())
    for _ in range(60):
        loss = (adapter(base) - base - shift).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error = (adapter(base) - base - shift).pow(2).sum()
    assert float(error) < 0.01 * start
