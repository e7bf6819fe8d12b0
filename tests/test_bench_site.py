"""The site benchmark on the smoke preset: a site's step against a plain loop, a round against its training."""

import math

import pytest

from fedelta.simulations.bench_site import main, run


def test_bench_site_times_each_method_and_a_round():
    report = run("smoke", steps=2, methods=["full", "lora"])
    assert [row["method"] for row in report["rows"]] == ["full", "lora"]
    for row in report["rows"]:
        # a tiny model's steps take about a millisecond, so only the arithmetic is checked, not the times
        assert row["plain_step_seconds"] > 0 and math.isfinite(row["site_step_seconds"])
        assert math.isclose(row["step_ratio"], row["site_step_seconds"] / row["plain_step_seconds"], rel_tol=0.02,
                            abs_tol=2e-3)
        assert math.isclose(row["site_fixed_seconds"],
                            row["site_round_seconds"]["seconds-train"] - 2 * row["site_step_seconds"], abs_tol=2e-3)
        reported = row["site_round_seconds"]
        assert math.isclose(reported["seconds"],
                            reported["seconds-sync"] + reported["seconds-train"] + reported["seconds-encode"],
                            abs_tol=2e-3)
    whole = report["round"]
    assert math.isclose(sum(whole["phases"].values()), whole["seconds"], rel_tol=1e-6, abs_tol=1e-6)
    assert 0 < whole["sites_training_seconds"] <= whole["seconds"]
    assert math.isclose(whole["round_vs_training"], whole["seconds"] / whole["sites_training_seconds"], rel_tol=0.01)


def test_bench_site_refuses_unknown_methods(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--methods", "full,nonesuch"])
    assert stopped.value.code == 2 and "unknown ['nonesuch']" in capsys.readouterr().err
