"""upload.budget-bytes: the site keeps as much as fits, measured by the codec's exact size, or says what would fit."""

import pytest
import torch

from fedelta.common import report
from fedelta.common.config import Settings
from fedelta.common.budget import LEAST_KEEP, BudgetTooSmall, fit_budget
from fedelta.common.upload import encode_upload, prune_target
from rounds import evaluate_all, open_federation, run_rounds

BASE = "ab" * 32


def _delta() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return {"w": torch.randn(300, 200, generator=gen) * 1e-3, "v": torch.randn(4000, generator=gen) * 1e-3,
            "b": torch.randn(100, generator=gen) * 1e-3}


def _fit(prune_name: str, budget: int):
    settings = Settings().with_overrides({"prune.name": prune_name, "upload.budget-bytes": budget})
    delta = _delta()

    def pruned_at(keep):
        return prune_target(delta, {}, settings, seed=3, keep=keep)

    def encoded(pruned):
        return encode_upload(pruned, settings, base=BASE)

    return fit_budget(pruned_at, encoded, budget), pruned_at, encoded


@pytest.mark.parametrize("prune_name", ["dare", "magnitude", "importance", "darex-q"])
def test_the_site_keeps_about_the_most_that_fits(prune_name):
    budget = 20_000
    fitted, pruned_at, encoded = _fit(prune_name, budget)
    assert len(fitted.payload) <= budget < len(encoded(pruned_at(fitted.over)))
    assert fitted.keep < fitted.over <= fitted.keep * 1.02
    assert fitted.pruned.delta.entries["b"].count == 100  # under prune.min-size: whole, whatever the budget


def test_a_budget_that_holds_everything_keeps_everything():
    fitted, _, _ = _fit("dare", 10_000_000)
    assert fitted.keep == 1.0 and fitted.over is None and fitted.tries == 1
    assert fitted.pruned.delta.count() == 300 * 200 + 4000 + 100


def test_a_budget_too_small_names_the_smallest_that_works():
    with pytest.raises(BudgetTooSmall, match=r"at least (\d+)") as refused:
        _fit("magnitude", 100)
    least = int(refused.value.args[0].rsplit(" ", 1)[-1])
    fitted, _, _ = _fit("magnitude", least)
    assert fitted.keep >= LEAST_KEEP and len(fitted.payload) <= least


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"prune.name": "none"}, "needs a pruner that keeps a chosen fraction"),
    ({"prune.name": "darex-q", "prune.q-mode": "labelled"}, "labelled q is fitted"),
    ({"prune.recover-steps": 2}, "recovery changes the values"),
    ({"upload.budget-bytes": -1}, "must be >= 0"),
])
def test_settings_refuse_budgets_that_cannot_be_kept(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        Settings().with_overrides({"upload.budget-bytes": 50_000, **overrides})


def test_every_upload_of_a_round_fits_the_budget(tiny_settings, tmp_path):
    budget = 6_000
    settings = tiny_settings.with_overrides({"upload.budget-bytes": budget, "rounds": 2})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 3))
        rows = coordinator.store.site_rounds()
        committed = coordinator.store.versions()
    assert len(rows) == 2 * len(sites) and len(committed) == 3
    for row in rows:
        assert 0 < row.upload_bytes <= budget
        assert 0 < row.metrics["budget-keep"] < 1 and row.metrics["budget-tries"] >= 3
    recorded = [row for row in report.read_rows(tmp_path / "out") if row["round"] > 0]
    assert [row["round"] for row in recorded] == [1, 2]
    for row in recorded:
        means = [site.metrics["budget-keep"] for site in rows if site.round == row["round"]]
        assert row["site_budget_keep"] == pytest.approx(sum(means) / len(means), rel=1e-12)
        assert row["upload_bytes"] <= budget * len(sites)


def test_the_merged_delta_sent_down_fits_its_budget_and_sites_stay_bit_identical(tiny_settings, tmp_path):
    budget = 6_000
    settings = tiny_settings.with_overrides({"downlink.prune": "magnitude", "downlink.budget-bytes": budget})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 3))
        merged = [version for version in coordinator.store.versions() if version.id > 0]
        assert [version.id for version in merged] == [1, 2]
        assert all(0 < version.blob_bytes <= budget for version in merged)
        assert sum(float(value.abs().sum()) for value in coordinator.encoder.residual.values()) > 0
        head = coordinator.head
        assert evaluate_all(coordinator, sites) == [(2, head.sha)] * len(sites)


def test_a_downlink_budget_too_small_sends_the_smallest_form_and_says_so(tiny_settings, tmp_path, caplog):
    settings = tiny_settings.with_overrides({"downlink.prune": "magnitude", "downlink.budget-bytes": 10})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 2))
        version = coordinator.head
        assert version.id == 1 and version.blob_bytes > 10
        assert evaluate_all(coordinator, sites) == [(1, version.sha)] * len(sites)
    assert "downlink.budget-bytes = 10 cannot hold this update" in caplog.text
    assert "set downlink.budget-bytes to at least" in caplog.text


def test_a_downlink_budget_needs_a_downlink_pruner():
    with pytest.raises(ValueError, match="needs downlink.prune to keep a chosen fraction"):
        Settings().with_overrides({"downlink.budget-bytes": 1000})
