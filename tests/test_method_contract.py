"""The contract every fine-tuning method meets, on tiny BERT and Llama classifiers and a tiny Llama causal LM.

One row per method, with non-default values of its own options: after merging,
the model is the base architecture; its outputs equal base weights plus the
decoded delta; the delta touches only what the method allows; uploads
round-trip; two sites' deltas aggregate exactly; the options take effect.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedelta.common.codec import Limits, decode
from fedelta.common.config import Settings
from fedelta.common.delta import BaseMask, Delta, Dense, LowRank, Sparse, apply_delta, extract_delta, model_params
from fedelta.common.methods import METHODS, MethodContext
from fedelta.common.methods.hiwi import HiWiAdapter
from fedelta.common.methods.pafi import smallest_positions
from fedelta.common.methods.svfit import SingularValueShift
from fedelta.common.model import ModelBundle, load_causal_lm, load_model
from fedelta.common.optimizers import make_optimizer
from fedelta.common.upload import make_upload
from fedelta.common.aggregation import WeightedMean

ROWS = {
    "full": {},
    "lnbias": {},
    "pafi": {"pafi.density": 0.05},
    # tiny models start with zero biases, where P' = P + f(P A) B has no gradient: add weights
    "hiwi": {"method.targets": "*intermediate.dense.bias,*intermediate.dense.weight,*mlp.up_proj.weight",
             "hiwi.width": 4},
    "svfit": {"svfit.rank": 4},
    "lora": {"lora.rank": 4},
}
ARCHITECTURES = ["tiny-bert", "tiny-llama", "tiny-llama-causal"]
CAUSAL = "tiny-llama-causal"  # a 2-layer Llama causal LM with tied embeddings, no new head


def _bundle(kind: str) -> ModelBundle:
    if kind == CAUSAL:
        model, tokenizer = load_causal_lm("tiny-llama", seed=0)
        return ModelBundle(model, tokenizer, head=[])
    return load_model(kind, num_labels=2, seed=0)
LIMITS = Limits(max_bytes=64 << 20, max_elements=10_000_000)


def _inputs(seed: int, kind: str = "tiny-bert") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 2000, (8, 12), generator=gen)
    labels = ids.clone() if kind == CAUSAL else torch.randint(0, 2, (8,), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels


def local_round(method_name: str, kind: str, seed: int):
    """Train a few steps with the method and return everything a contract check needs."""
    settings = Settings().with_overrides(
        {"model.path": kind, "method.name": method_name, "prune.name": "none", "quant.values": "fp32",
         "local.lr": 1e-2, "local.head-lr": 1e-2, **ROWS[method_name]}
    )
    bundle = _bundle(kind)
    base = {name: value.clone() for name, value in model_params(bundle.model).items()}
    context = MethodContext(settings.method, bundle.head, "genesis", lambda: base,
                            options=settings.options_for(method_name),
                            peft_task_type="CAUSAL_LM" if kind == CAUSAL else "SEQ_CLS")
    method = METHODS.get(method_name)
    attachment = method.attach(bundle.model, context)
    optimizer = make_optimizer(bundle.model, attachment.trainable, bundle.head, settings.local, settings.optimizer)
    bundle.model.train()
    for step in range(3):
        inputs, labels = _inputs(seed * 10 + step, kind)
        loss = bundle.model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    bundle.model.eval()
    formed = attachment.formed()
    attachment.merge()
    dense = extract_delta(model_params(bundle.model), base, [n for n in attachment.touched if n not in formed])
    upload = make_upload(dense, {}, settings, base="b" * 64, seed=seed, limits=LIMITS, formed=formed)
    resolved = method.resolver(context, base).resolve(upload.sent)
    return bundle, base, context, method, attachment, formed, upload, resolved


@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("method_name", list(ROWS))
def test_method_contract(method_name, kind):
    bundle, base, context, method, attachment, formed, upload, resolved = local_round(method_name, kind, seed=1)
    fresh = _bundle(kind).model

    # After merging, the architecture is exactly the base's.
    assert [type(m) for _, m in bundle.model.named_modules()] == [type(m) for _, m in fresh.named_modules()]
    shapes = {name: tuple(p.shape) for name, p in bundle.model.named_parameters()}
    assert shapes == {name: tuple(p.shape) for name, p in fresh.named_parameters()}

    # Base weights plus the decoded delta give the trained model's outputs.
    allowed = set(method.touched(fresh, context))
    assert set(resolved.names()) <= allowed and set(attachment.touched) == allowed
    apply_delta(model_params(fresh), resolved)
    inputs, _ = _inputs(99)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, bundle.model(**inputs).logits, rtol=1e-4, atol=1e-5)

    # A tied input/output embedding is one tensor: in the model and in every delta.
    if kind == CAUSAL:
        assert bundle.model.lm_head.weight is bundle.model.model.embed_tokens.weight
        assert "lm_head.weight" not in resolved.names() and "lm_head.weight" not in allowed

    # Outside the touched tensors nothing moved, bit for bit.
    for name, value in model_params(bundle.model).items():
        if name not in allowed:
            assert torch.equal(value, base[name]), name
    body = [name for name in resolved.names() if name not in bundle.head]
    assert body and any(resolved.entries[name].to_dense().abs().sum() > 0 for name in body)

    # The new task head trains under every method, and its change is in the upload.
    trained = model_params(bundle.model)
    for name in bundle.head:
        assert not torch.equal(trained[name], base[name]), name
        torch.testing.assert_close(resolved.entries[name].to_dense(), trained[name] - base[name])

    # Uploads round-trip exactly (fp32 values).
    decoded = decode(upload.payload, LIMITS).delta
    for name, entry in formed.items():
        got = decoded.entries[name]
        if isinstance(entry, LowRank):
            assert torch.equal(got.a, entry.a) and torch.equal(got.b, entry.b)
        else:
            assert torch.equal(got.flat_values(), entry.flat_values())


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_pafi_touches_only_the_mask_of_version_zero(kind):
    bundle, base, context, method, attachment, formed, upload, resolved = local_round("pafi", kind, seed=2)
    trained = model_params(bundle.model)
    matrices = [name for name in formed]
    assert matrices and all("embed" not in name and name not in bundle.head for name in matrices)
    for name in matrices:
        mask = smallest_positions(base[name], 0.05)
        entry = resolved.entries[name]
        assert isinstance(entry, Sparse) and torch.equal(entry.indices, mask)
        moved = (trained[name] != base[name]).reshape(-1).nonzero().reshape(-1)
        assert set(moved.tolist()) <= set(mask.tolist())
    payload_tensors = decode(upload.payload, LIMITS).delta
    assert all(not isinstance(payload_tensors.entries[n], Sparse) for n in matrices)


@pytest.mark.parametrize("method_name", list(ROWS))
def test_two_sites_aggregate_to_the_dense_reference(method_name):
    first = local_round(method_name, "tiny-bert", seed=3)[-1]
    second = local_round(method_name, "tiny-bert", seed=4)[-1]
    merged = WeightedMean()
    merged.add(first, 3.0)
    merged.add(second, 1.0)
    result = merged.result()
    for name in set(first.names()) | set(second.names()):
        dense = [d.entries[name].to_dense() for d in (first, second) if name in d.entries]
        reference = (3.0 * dense[0] + 1.0 * dense[1]) / 4.0 if len(dense) == 2 else None
        if reference is not None:
            torch.testing.assert_close(result.entries[name].to_dense(), reference, rtol=1e-5, atol=1e-7)


def test_lora_server_forms_the_sum_of_products_not_the_product_of_means():
    sites = [local_round("lora", "tiny-bert", seed=s)[5] for s in (5, 6)]
    name = next(n for n, e in sites[0].items() if isinstance(e, LowRank))
    merged = WeightedMean()
    for formed in sites:
        merged.add(Delta({name: formed[name]}), 1.0)
    exact = (sites[0][name].to_dense() + sites[1][name].to_dense()) / 2
    naive = ((sites[0][name].b + sites[1][name].b) / 2) @ ((sites[0][name].a + sites[1][name].a) / 2)
    got = merged.result().entries[name].to_dense()
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got, naive, rtol=1e-3, atol=1e-6)


def _pafi_fractions(model: torch.nn.Module, formed: dict) -> set[float]:
    return {round(e.count / math.prod(e.shape), 2) for e in formed.values() if isinstance(e, BaseMask)}


def _hiwi_widths(model: torch.nn.Module, formed: dict) -> set[int]:
    return {m.b.shape[0] for m in model.modules() if isinstance(m, HiWiAdapter)}


def _svfit_ranks(model: torch.nn.Module, formed: dict) -> set[int]:
    return {m.sigma.numel() for m in model.modules() if isinstance(m, SingularValueShift)}


def _lora_ranks(model: torch.nn.Module, formed: dict) -> set[int]:
    return {e.a.shape[0] for e in formed.values() if isinstance(e, LowRank)}


# What the option a row sets changes on an attached model: the probe and what it reads under ROWS.
OPTION_PROBES = {
    "pafi": (_pafi_fractions, {0.05}), "hiwi": (_hiwi_widths, {4}), "svfit": (_svfit_ranks, {4}),
    "lora": (_lora_ranks, {4}),
}


def _attached(method_name: str, settings: Settings) -> tuple[torch.nn.Module, dict]:
    bundle = load_model("tiny-bert", num_labels=2, seed=0)
    base = {name: value.clone() for name, value in model_params(bundle.model).items()}
    context = MethodContext(settings.method, bundle.head, "genesis", lambda: base,
                            options=settings.options_for(method_name))
    attachment = METHODS.get(method_name).attach(bundle.model, context)
    return bundle.model, attachment.formed()


@pytest.mark.parametrize("method_name", sorted(OPTION_PROBES))
def test_each_method_reads_its_own_options(method_name):
    probe, expected = OPTION_PROBES[method_name]
    configured = Settings().with_overrides({"method.name": method_name, **ROWS[method_name]})
    defaults = configured.with_overrides({key: value for key, value in Settings().to_run_config().items()
                                          if key.startswith(f"{method_name}.")})

    assert probe(*_attached(method_name, configured)) == expected
    assert probe(*_attached(method_name, defaults)) != expected


def test_a_method_refuses_another_methods_options():
    bundle = load_model("tiny-bert", num_labels=2, seed=0)
    context = MethodContext(Settings().method, bundle.head, options=Settings().options_for("svfit"))
    with pytest.raises(ValueError, match="LoRAOptions"):
        METHODS.get("lora").attach(bundle.model, context)


def test_every_method_is_registered_with_a_reference():
    assert set(ROWS) <= set(METHODS.names())
    for entry in METHODS:
        assert entry.summary and entry.reference


def test_unknown_targets_are_a_clear_error():
    settings = Settings().with_overrides({"method.name": "hiwi", "method.targets": "*nothing*"})
    bundle = load_model("tiny-bert", num_labels=2, seed=0)
    with pytest.raises(ValueError, match="method.targets"):
        METHODS.get("hiwi").attach(bundle.model, MethodContext(settings.method, bundle.head))


def test_dense_entries_of_lnbias_are_tiny():
    *_, resolved = local_round("lnbias", "tiny-bert", seed=7)
    total = sum(p.numel() for p in load_model("tiny-bert", 2, 0).model.parameters())
    assert all(isinstance(e, Dense) for e in resolved.entries.values())
    assert resolved.count() < 0.01 * total


@pytest.mark.parametrize("kind, adapted", [
    ("tiny-bert", "bert.encoder.layer.0.intermediate.dense.bias"),
    (CAUSAL, "model.layers.0.post_attention_layernorm.weight"),
])
def test_hiwi_adapts_ffn_biases_or_on_llama_the_ffn_input_norm_gains(kind, adapted):
    bundle = _bundle(kind)
    settings = Settings().with_overrides({"method.name": "hiwi"})
    context = MethodContext(settings.method, bundle.head, options=settings.options_for("hiwi"))
    targets = METHODS.get("hiwi").targets(bundle.model, context)
    assert adapted in targets and len(targets) == 2
