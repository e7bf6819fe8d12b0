"""bench_codec's rows on a small model folder, and the pruning sweep's quick mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fedelta.simulations.bench_codec import CASES, log2_binomial, main as bench_codec_main, run
from fedelta.simulations.shapes import LLAMA_1B, folder_shapes, llama_1b_shapes
from fedelta.simulations.sweep_pruning import main as sweep_main


def _model_dir(folder: Path) -> Path:
    tensors = {"enc.weight": torch.zeros(64, 32), "enc.bias": torch.zeros(64), "ids": torch.zeros(5, dtype=torch.int64)}
    safetensors.torch.save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"hidden_size": 32}))
    return folder


def test_bench_codec_reads_real_shapes_and_reports_every_case(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    folder = _model_dir(tmp_path)
    assert folder_shapes(folder) == {"enc.weight": (64, 32), "enc.bias": (64,), "classifier.weight": (2, 32),
                                     "classifier.bias": (2,)}
    report = run(scale=1e-3, repeats=1, seed=0, model_dir=folder)
    assert report["model"] == tmp_path.name and report["shapes"] == "minilm"
    assert [row["case"] for row in report["rows"]] == [f"{m}/{v}/d={d:g}" for d, m, v in CASES]
    numel = 64 * 32 + 64 + 64 + 2
    for row in report["rows"]:
        assert row["n"] == numel == report["dense_fp32_bytes"] // 4
        assert abs(row["ratio_to_bound"] * row["bound_bytes"] - row["bytes"]) <= row["ratio_to_bound"]  # bound rounded
        bits = 16 if "/fp16/" in row["case"] else 8
        assert row["bound_bytes"] >= row["k"] * bits / 8 - 1
        if row["case"].startswith("seeded"):
            assert row["index_ratio_to_bound"] is None and row["bound_bytes"] == round(row["k"] * bits / 8)
        else:
            assert row["index_ratio_to_bound"] > 0.9
        assert row["encode_vs_zstd"] > 0 and row["decode_vs_zstd"] > 0 and row["encode_vs_unzstd"] > 0
        assert ("mask_temp_bytes" in row) == row["case"].startswith("seeded")
    assert math.isclose(log2_binomial(10, 3), math.log2(120))


def test_llama_1b_shapes_add_up_to_its_parameter_count():
    shapes = llama_1b_shapes()
    h, f, kv = LLAMA_1B["hidden"], LLAMA_1B["intermediate"], 512
    per_layer = 2 * h * h + 2 * kv * h + 3 * f * h + 2 * h
    assert sum(math.prod(shape) for shape in shapes.values()) == LLAMA_1B["vocab"] * h + 16 * per_layer + h
    assert len(shapes) == 1 + 16 * 9 + 1 and shapes["model.layers.15.self_attn.k_proj.weight"] == (kv, h)


def test_bench_codec_refuses_densities_it_cannot_use(capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_codec_main(["--densities", "0.01,2"])
    assert stopped.value.code == 2 and "each must be in (0, 1]" in capsys.readouterr().err


def test_sweep_quick_mode_writes_a_full_table(tmp_path):
    assert sweep_main(["--quick", "--optimizers", "adamw", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["model"] == "tiny-bert"
    cells = report["runs"][0]["cells"]
    assert {(c["drop"], c["pruner"]) for c in cells} == {
        (p, name) for p in (0.5, 0.9, 0.95, 0.99) for name in ("dare", "darex-q", "magnitude", "importance")}
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in cells)
    assert all((c["mean_q"] is not None) == (c["pruner"] == "darex-q") for c in cells)
    assert "| 0.99 |" in (tmp_path / "sweep.md").read_text() and (tmp_path / "sweep.png").stat().st_size > 0
