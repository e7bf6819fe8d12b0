import pytest

from common.delta import model_params
from common.config import MethodSettings
from common.methods import METHODS, MethodContext
from common.model import load_model


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
    from common.delta import state_hash

    first = load_model("tiny-bert", num_labels=2, seed=3)
    second = load_model("tiny-bert", num_labels=2, seed=3)
    assert state_hash(model_params(first.model)) == state_hash(model_params(second.model))
