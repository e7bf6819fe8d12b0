"""The same settings and seed end on the same version hashes, whatever order the sites reply in."""

import json
import subprocess
import sys

import pytest
import torch

from fedelta.common.config import Settings
from fedelta.server.rounds import RoundDriver
from rounds import node_of, open_federation

DROPOUT_AND_LORA = {"method.name": "lora", "federation.num-sites": 3, "rounds": 2}


def _hashes(settings: Settings, root, order) -> list[str]:
    """Every committed version's hash after ``settings.rounds`` rounds with the sites replying in ``order``."""
    with open_federation(settings, root) as (coordinator, sites):
        driver = RoundDriver(coordinator)
        for server_round in range(1, settings.rounds + 1):
            chosen = [sites[index] for index in order]
            driver.run_round(server_round, {node_of(site): site for site in chosen})
        return [coordinator.store.version(v).sha for v in range(coordinator.head.id + 1)]


def test_reply_order_and_the_process_history_do_not_change_the_versions(tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides(DROPOUT_AND_LORA)
    first = _hashes(settings, tmp_path / "a", [0, 1, 2])
    torch.rand(1000)  # a different global random state before the second federation
    second = _hashes(settings, tmp_path / "b", [2, 0, 1])
    assert len(first) == settings.rounds + 1
    assert first == second


@pytest.mark.slow
def test_two_flower_simulations_with_one_seed_commit_identical_versions(tmp_path):
    rows = []
    for run in ("first", "second"):
        out = tmp_path / run
        command = [sys.executable, "-m", "fedelta", "simulate", "--preset", "smoke",
                   "--set", "federation.num-sites=3", "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        rows.append([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    first, second = ([(row["version"], row["version_sha256"]) for row in run] for run in rows)
    assert [version for version, _ in first] == [0, 1, 2]
    assert first == second
