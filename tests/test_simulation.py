"""End to end on Flower's Simulation Engine: tiny model, 2 sites, 2 rounds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rounds import assert_phases_add_up

from fedelta.client.state import SiteState
from fedelta.common.report import ROUND_FIELDS

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_simulation_writes_the_documented_results(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedelta", "simulate", "--preset", "smoke", "--out", str(out)]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "final accuracy" in done.stdout and "round version" in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].startswith("fedelta: 2 sites, 2 rounds") and lines[1].startswith("round version")
    assert "INFO" not in done.stdout + done.stderr  # Flower's, Ray's and the sites' output is in engine.log
    assert "INFO" in (out / "engine.log").read_text()

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert set(ROUND_FIELDS) <= set(row)
    trained = rows[1:]
    assert [row["version"] for row in trained] == [1, 2]
    assert all(row["sites"] == 2 and row["rejected"] == 0 for row in trained)
    assert all(0 < row["upload_bytes"] < row["dense_update_bytes"] for row in trained)
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in rows)
    for row in rows:  # where each round's time went: the phases add up to its seconds
        assert_phases_add_up(row)
    assert all(set(row["site_phases"]) == {"setup", "sync", "train", "encode", "evaluate"} for row in trained)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_upload_bytes"] == sum(row["upload_bytes"] for row in trained)
    assert summary["upload_reduction"] == pytest.approx(
        summary["total_dense_update_bytes"] / summary["total_upload_bytes"]
    )
    assert summary["final_accuracy"] == trained[-1]["accuracy"]
    assert summary["config"]["model.path"] == "tiny-bert"
    assert (out / "summary.md").read_text().startswith("# fedelta run")
    assert (out / "plot.png").read_bytes()[:4] == (out / "phases.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Where the time went" in (out / "summary.md").read_text()

    final_sha = trained[-1]["version_sha256"]
    for site_dir in sorted((out / "sites").iterdir()):
        cached = SiteState(site_dir).load_version()
        assert cached is not None and (cached.version, cached.sha) == (2, final_sha)


def test_cli_rejects_bad_settings_before_starting(tmp_path):
    command = [sys.executable, "-m", "fedelta", "simulate", "--set", "prune.drop=2", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "prune.drop" in done.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_bad_instruction_file_stops_simulate_before_anything_starts(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "q", "response": "a"}\n{"messages": []}\n', encoding="utf-8")
    command = [sys.executable, "-m", "fedelta", "simulate", "--preset", "llm-smoke", "--set", f"data.path={data}",
               "--out", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert f"data file {str(data)!r}, row 2, column 'messages': must be a list of at least two messages" in done.stderr


def test_a_file_without_groups_under_the_movie_partition_stops_simulate_before_anything_starts(tmp_path):
    data = tmp_path / "labels.jsonl"  # the hostile tester's file: labels 0/1, no group column
    data.write_text("".join(json.dumps({"text": f"review {i}", "label": i % 2}) + "\n" for i in range(60)))
    command = [sys.executable, "-m", "fedelta", "simulate", "--preset", "smoke", "--set", f"data.path={data}",
               "--out", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert done.stderr.strip().splitlines() == [
        "fedelta: error: data.partition = movie gives each site whole groups (the data's 'group' column), so it "
        "needs at least 2 groups for 2 sites, and the data has no group column; use --set data.partition=iid or "
        "dirichlet, or add a 'group' column"]


@pytest.mark.slow
@pytest.mark.parametrize("setting, reason", [
    ("output.site-cache=/dev/null/sites", "fedelta: every site failed in every round (4 failures in 1 round); "
                                          "the first: "),
    ("validate.max-decoded-bytes=1", "fedelta: no round committed a version (1 round, 2 rejected updates or "
                                     "failed sites); the first: payload of "),
], ids=["every-site-fails", "no-upload-accepted"])
def test_simulate_that_commits_nothing_exits_1_with_one_line_why(tmp_path, setting, reason):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedelta", "simulate", "--preset", "smoke", "--set", "rounds=1",
               "--set", setting, "--out", str(out)]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "final accuracy" not in done.stdout and (out / "summary.json").is_file()
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(reason) and line.endswith(f"; see {out / 'engine.log'}")


def test_methods_command_lists_every_registry():
    done = subprocess.run([sys.executable, "-m", "fedelta", "methods"], cwd=PROJECT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for name in ("classification", "causal-lm", "full", "lnbias", "none", "dare", "magnitude", "fedavg", "fp16",
                 "adamw", "adamr", "sgd", "perp"):
        assert f"  {name}" in done.stdout
    for title in ("tasks (task.name)", "optimizers (optimizer.name)", "recovery after pruning (prune.recover-steps)"):
        assert title in done.stdout
    for reference in ("arXiv:1711.05101", "arXiv:2410.09344", "Robbins & Monro 1951", "arXiv:2312.15230"):
        assert reference in done.stdout


@pytest.mark.slow
def test_llm_smoke_simulation_and_its_resumption_end_on_one_hash(tmp_path):
    out, state = tmp_path / "run", tmp_path / "state"
    base = [sys.executable, "-m", "fedelta", "simulate", "--preset", "llm-smoke", "--out", str(out),
            "--state-dir", str(state)]
    first = subprocess.run(base + ["--set", "rounds=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.splitlines()[1].split()[2:5] == ["acc", "loss", "ppl"]
    again = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming after round 1 at version 1" in again.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2] and [row["version"] for row in rows] == [0, 1, 2]
    assert all(row["perplexity"] > 1 and 0 <= row["accuracy"] <= 1 for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["task.name"] == "causal-lm" and summary["final_perplexity"] == rows[-1]["perplexity"]
    for site_dir in sorted((out / "sites").iterdir()):
        assert SiteState(site_dir).load_version().sha == rows[-1]["version_sha256"]
