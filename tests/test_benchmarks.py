"""The benchmark and experiment scripts run (quick modes); their numbers are reported, not asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedelta.common.methods import METHODS

PROJECT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: int = 300) -> str:
    done = subprocess.run([sys.executable, "-m", *args], cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_latency_benchmark_covers_every_method_merged():
    report = json.loads(_run("fedelta.simulations.bench_latency", "--model", "tiny-bert", "--repeats", "1",
                             "--batch", "4", "--json"))
    merged = {row["method"] for row in report["rows"] if row["merged"]}
    attached = {row["method"] for row in report["rows"] if not row["merged"]}
    assert report["model"] == "tiny-bert"
    assert merged == set(METHODS.names()) and attached == {"lora", "hiwi", "svfit"}
    assert all(row["ratio_to_base"] > 0 and row["base_ms"] > 0 for row in report["rows"])


@pytest.mark.slow
def test_method_comparison_quick_mode(tmp_path):
    _run("fedelta.simulations.compare_methods", "--quick", "--methods", "pafi", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "methods.json").read_text())
    assert [row["method"] for row in rows] == ["pafi"]
    assert all(row["upload_bytes_per_site_round"] > 0 for row in rows)
    assert "| pafi |" in (tmp_path / "methods.md").read_text()
