"""The aggregation benchmark runs each S in its own process; its memory bound is the issue's target."""

import json
import subprocess
import sys
from math import prod
from pathlib import Path

from fedelta.common.delta import kept_count
from fedelta.simulations.shapes import minilm_shapes

PROJECT = Path(__file__).resolve().parent.parent


def test_aggregation_and_commit_memory_stay_within_one_and_a_half_models():
    command = [sys.executable, "-m", "fedelta.simulations.bench_aggregate", "--sites", "4,16", "--json"]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    numel = sum(prod(shape) for shape in minilm_shapes().values())
    per_site = sum(kept_count(prod(shape), 0.01) for shape in minilm_shapes().values())
    assert numel == 22_713_986
    assert [row["sites"] for row in report["rows"]] == [4, 16]
    for row in report["rows"]:
        assert row["model_bytes"] == 4 * numel and row["kept_entries"] == row["sites"] * per_site
        assert 0 < row["peak_extra_bytes"] <= 1.5 * row["model_bytes"]
        assert 0 < row["commit_peak_extra_over_model"] <= 1.5
        assert row["round_peak_extra_over_model"] == max(row["peak_extra_over_model"],
                                                         row["commit_peak_extra_over_model"])
        assert row["peak_extra_over_model"] == round(row["peak_extra_bytes"] / row["model_bytes"], 3)
        assert row["seconds_vs_dense_pass"] > 0 and row["later_round_vs_dense_pass"] > 0
        assert row["first_calls_seconds"] > 0
        assert len(row["later_rounds_seconds"]) == 3
        assert row["later_round_seconds"] == sorted(row["later_rounds_seconds"])[1]  # their median
