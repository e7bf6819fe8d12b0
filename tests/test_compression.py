"""DAREx-q, importance pruning, quantizers, error feedback and PERP recovery: exact invariants."""

from __future__ import annotations

import math

import pytest
import torch

from fedelta.common.codec import Limits, decode, encode
from fedelta.common.config import PruneSettings
from fedelta.common.delta import Dense, SeededMask, Sparse, seeded_mask
from fedelta.common.pruning import PRUNERS, Calibration, PruneRequest, prune_delta
from fedelta.common.pruning.calibration import capture_inputs, choose_global_q, q_grid
from fedelta.common.pruning.darex_q import output_preserving_q
from fedelta.common.delta import kept_count
from fedelta.common.quantization import VALUE_TYPES, round_trip
from fedelta.common.upload import make_upload, prune_target

LIMITS = Limits(max_bytes=1 << 22, max_elements=1_000_000)
BASE = "cd" * 32


def _layer(out: int = 48, inp: int = 32, rows: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy linear layer's delta and inputs whose columns differ in scale (as real activations do)."""
    gen = torch.Generator().manual_seed(seed)
    delta = torch.randn(out, inp, generator=gen) * 0.01
    inputs = torch.randn(rows, inp, generator=gen) * torch.logspace(-1, 1, inp)
    return delta, inputs


# Pruner table: name, entry kind, whether its kept count is exact (top-k) or seeded (Bernoulli), and its
# traits: rescales its kept values, needs layer inputs, needs labels (with prune.q-mode = labelled).
PRUNER_TABLE = [
    ("dare", SeededMask, "seeded", {"rescales"}),
    ("darex-q", SeededMask, "seeded", {"rescales", "inputs", "labels"}),
    ("magnitude", Sparse, "exact", set()),
    ("importance", Sparse, "exact", {"inputs"}),
    ("none", Dense, "all", set()),
]


def test_pruner_table_covers_the_registry():
    assert {row[0] for row in PRUNER_TABLE} == set(PRUNERS.names())


@pytest.mark.parametrize(("pruner", "traits"), [(row[0], row[3]) for row in PRUNER_TABLE])
def test_each_pruner_declares_its_traits(pruner, traits):
    unit = PRUNERS.get(pruner)
    assert unit.rescales == ("rescales" in traits)
    assert unit.needs_inputs == ("inputs" in traits)
    assert unit.needs_labels(PruneSettings(name=pruner, q_mode="labelled")) == ("labels" in traits)
    assert not unit.needs_labels(PruneSettings(name=pruner, q_mode="unlabelled"))


@pytest.mark.parametrize(("pruner", "kind", "count"), [row[:3] for row in PRUNER_TABLE])
@pytest.mark.parametrize("keep", [0.5, 0.05, 0.01])
def test_each_pruner_keeps_exactly_its_density(pruner, kind, count, keep):
    delta, inputs = _layer(64, 96, seed=3)
    request = PruneRequest(keep, seed=7, calibration=Calibration({"w": inputs}))
    entry = PRUNERS.get(pruner).prune("w", delta, request)
    assert isinstance(entry, kind)
    if count == "exact":
        assert entry.count == kept_count(delta.numel(), keep)
    elif count == "seeded":
        assert entry.count == int(seeded_mask(7, "w", delta.numel(), keep).sum())
        assert torch.equal(entry.positions(), seeded_mask(7, "w", delta.numel(), keep).nonzero().reshape(-1))
    else:
        assert entry.count == delta.numel()


def test_darex_q_equals_a_brute_force_minimum_on_a_toy_layer():
    delta, inputs = _layer()
    request = PruneRequest(0.1, seed=5, calibration=Calibration({"w": inputs}))
    entry = PRUNERS.get("darex-q").prune("w", delta, request)
    q = request.stats["w"]
    kept = torch.zeros(delta.numel())
    kept[entry.positions()] = delta.reshape(-1)[entry.positions()]
    a = (inputs @ kept.reshape(delta.shape).T).double()
    b = (inputs @ delta.T).double()
    grid = torch.linspace(0.01, 1.0, 99_001, dtype=torch.float64)
    losses = torch.stack([((a / g - b) ** 2).sum() for g in grid[::100]])
    coarse = grid[::100][losses.argmin()]
    fine = grid[(grid - coarse).abs() <= 1e-3]
    best = fine[torch.stack([((a / g - b) ** 2).sum() for g in fine]).argmin()]
    assert abs(q - float(best)) <= 1e-5
    assert ((a / q - b) ** 2).sum() <= ((a / best - b) ** 2).sum() + 1e-12
    assert torch.equal(entry.values, delta.reshape(-1)[entry.positions()] / q)
    assert q != pytest.approx(0.1)  # the fitted rescale differs from DARE's


def test_darex_q_falls_back_to_dare_without_inputs_and_uses_a_given_global_q():
    delta, _ = _layer()
    plain = PRUNERS.get("darex-q").prune("w", delta, PruneRequest(0.2, seed=1))
    dare = PRUNERS.get("dare").prune("w", delta, PruneRequest(0.2, seed=1))
    assert torch.equal(plain.values, dare.values) and torch.equal(plain.positions(), dare.positions())
    bias = torch.randn(48)
    request = PruneRequest(0.2, seed=1, calibration=Calibration({"w": torch.randn(5, 32)}, q=0.5))
    entry = PRUNERS.get("darex-q").prune("b", bias, request)
    assert torch.equal(entry.values, bias[entry.positions()] / 0.5) and request.stats == {"b": 0.5}


def test_importance_keeps_the_top_scores_and_falls_back_to_magnitude():
    delta, inputs = _layer(seed=2)
    entry = PRUNERS.get("importance").prune("w", delta, PruneRequest(0.1, 0, Calibration({"w": inputs})))
    score = (delta.abs() * inputs.norm(dim=0)).reshape(-1)
    dropped = torch.ones(delta.numel(), dtype=torch.bool)
    dropped[entry.indices] = False
    assert score[entry.indices].min() >= score[dropped].max()
    assert not torch.equal(entry.indices, PRUNERS.get("magnitude").prune("w", delta, PruneRequest(0.1, 0)).indices)
    no_inputs = PRUNERS.get("importance").prune("w", delta, PruneRequest(0.1, 0))
    assert torch.equal(no_inputs.indices, PRUNERS.get("magnitude").prune("w", delta, PruneRequest(0.1, 0)).indices)
    assert PRUNERS.get("importance").needs_inputs and PRUNERS.get("darex-q").needs_inputs
    assert not PRUNERS.get("dare").needs_inputs


def test_capture_inputs_drops_padding_and_names_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.body(input_ids)

    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    captured = capture_inputs(Wrapped(), {"input_ids": x, "attention_mask": mask})
    assert set(captured) == {"body.0.weight", "body.2.weight"}
    assert torch.equal(captured["body.0.weight"], x[mask.bool()])
    assert captured["body.2.weight"].shape == (8, 6)


def test_labelled_q_picks_the_best_scoring_grid_point():
    delta, _ = _layer()
    grid = q_grid(0.1)
    assert grid[0] == pytest.approx(0.1) and grid[-1] == 1.0 and grid == sorted(grid)
    target_scale = 1 / grid[2]

    def score(pruned):  # best when the kept values were rescaled by exactly 1/grid[2]
        entry = pruned.entries["w"]
        scale = float(entry.values[0] / delta.reshape(-1)[entry.positions()[0]])
        return (-abs(scale - target_scale), 0.0)

    assert choose_global_q({"w": delta}, PruneRequest(0.1, 4), score, min_size=0) == pytest.approx(grid[2])


# Quantizer table: name, the bound on each value's absolute error given the tensor v.
QUANT_TABLE = [
    ("fp32", lambda v: torch.zeros_like(v)),
    ("fp16", lambda v: v.abs() * 2.0**-11 + 2.0**-25),  # half an ulp; subnormals below 2**-14
    ("bf16", lambda v: v.abs() * 2.0**-8),  # half an ulp of an 8-bit significand
    ("int8", lambda v: torch.full_like(v, float(v.abs().max()) / 127 / 2)),
    ("ternary", lambda v: torch.where(v == 0, 0.0, (v.abs() - v.abs().sum() / v.count_nonzero()).abs())),
]


def test_quantizer_table_covers_the_registry():
    assert {row[0] for row in QUANT_TABLE} == set(VALUE_TYPES.names())


@pytest.mark.parametrize(("values", "bound"), QUANT_TABLE)
def test_each_quantizer_error_is_within_its_stated_bound(values, bound):
    v = torch.randn(5000, generator=torch.Generator().manual_seed(8)) * 1e-3
    decoded = round_trip(VALUE_TYPES.get(values), v)
    assert decoded.dtype == torch.float32
    assert ((decoded - v).abs() <= bound(v) * (1 + 1e-6)).all()


def test_ternary_scale_is_the_least_squares_scale_for_the_signs():
    v = torch.randn(4000, generator=torch.Generator().manual_seed(1)).double()
    v[::3] = 0.0  # exact zeros, as pruned or pattern-locked positions have: they decode to 0
    decoded = round_trip(VALUE_TYPES.get("ternary"), v.float()).double()
    nonzero = int(v.count_nonzero())
    alpha = torch.tensor(float(v.float().abs().sum()) / nonzero, dtype=torch.float32).double()  # the fp32 scale sent
    assert set(decoded.unique().tolist()) == {-float(alpha), 0.0, float(alpha)}
    assert (decoded[v == 0] == 0).all()
    error = ((decoded - v) ** 2).sum()
    assert float(error) == pytest.approx(float((v**2).sum() - nonzero * alpha**2), rel=1e-5)
    for other in (alpha * 0.9, alpha * 1.1):
        assert ((torch.sign(v) * other - v) ** 2).sum() > error


@pytest.mark.parametrize("values", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("pruner", ["magnitude", "importance", "none"])
def test_error_feedback_residual_identity_is_exact(tiny_settings, values, pruner):
    settings = tiny_settings.with_overrides({
        "prune.name": pruner, "prune.density": 0.1, "prune.min-size": 0, "quant.values": values,
        "feedback.enabled": True,
    })
    gen = torch.Generator().manual_seed(4)
    delta = {"w": torch.randn(30, 20, generator=gen), "b": torch.randn(30, generator=gen)}
    residual_old = {"w": torch.randn(30, 20, generator=gen) * 0.1}
    upload = make_upload(delta, residual_old, settings, base=BASE, seed=1, limits=LIMITS,
                         calibration=Calibration({"w": torch.randn(8, 20, generator=gen)}))
    for name, value in delta.items():
        left = value + residual_old[name] if name in residual_old else value
        right = upload.sent.entries[name].to_dense() + upload.residual[name]
        assert torch.equal(left, right), name
    assert upload.metrics["residual-norm"] == pytest.approx(
        math.sqrt(sum(float((r.double() ** 2).sum()) for r in upload.residual.values())))
    if pruner != "none" or values != "fp32":
        assert upload.metrics["residual-norm"] > 0


def test_darex_q_upload_reports_the_q_it_used(tiny_settings):
    settings = tiny_settings.with_overrides({"prune.name": "darex-q", "prune.drop": 0.9, "prune.min-size": 0})
    delta, inputs = _layer()
    pruned = prune_target({"w": delta, "b": torch.randn(48)}, {}, settings, seed=3,
                          calibration=Calibration({"w": inputs}))
    assert set(pruned.stats) == {"w", "b"} and pruned.stats["b"] == pytest.approx(0.1)
    upload = make_upload({"w": delta}, {}, settings, base=BASE, seed=3, limits=LIMITS,
                         calibration=Calibration({"w": inputs}))
    fitted = output_preserving_q(
        torch.zeros(delta.numel()).index_copy(0, upload.sent.entries["w"].positions(),
                                              delta.reshape(-1)[upload.sent.entries["w"].positions()]).reshape(delta.shape),
        delta, inputs)
    assert upload.metrics["prune-q"] == pytest.approx(fitted)


@pytest.mark.parametrize("values", sorted(VALUE_TYPES.names()))
@pytest.mark.parametrize("pruner", sorted(PRUNERS.names()))
def test_codec_round_trip_for_every_pruner_and_value_type(pruner, values):
    delta, inputs = _layer(40, 32, seed=6)
    dense = {"w": delta, "b": torch.randn(40) * 0.01, "small": torch.randn(3)}
    request = PruneRequest(0.1, seed=2, calibration=Calibration({"w": inputs}))
    pruned = prune_delta(dense, pruner, request, min_size=10)
    decoded = decode(encode(pruned, base=BASE, values=values), LIMITS)
    quantizer = VALUE_TYPES.get(values)
    for name, entry in pruned.entries.items():
        got = decoded.delta.entries[name]
        assert type(got) is type(entry) and got.shape == entry.shape
        assert torch.equal(got.flat_values().to(torch.float32).reshape(-1),
                           round_trip(quantizer, entry.flat_values().reshape(-1)))
        if entry.positions() is not None:
            assert torch.equal(got.positions(), entry.positions())
