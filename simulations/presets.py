"""Named sets of setting overrides for ``fedelta simulate --preset NAME``."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The pyproject.toml defaults: MiniLM on Rotten Tomatoes, 4 sites by movie,
    # full fine-tuning, DARE p=0.9, fp16 values, error feedback.
    "default": {},
    # A tiny BERT built from a config on a slice of the data: under a minute.
    "smoke": {
        "model.path": "tiny-bert",
        "federation.num-sites": 2,
        "rounds": 2,
        "local.steps": 3,
        "local.batch-size": 8,
        "local.lr": 1e-3,
        "data.test-size": 64,
        "data.max-site-examples": 64,
        "model.max-length": 32,
    },
    # SmolLM2-135M-Instruct (bundled GGUF) tuned as a generative sentiment classifier: Rotten Tomatoes as an
    # instruction task, 4 sites by movie, full fine-tuning with DARE p = 0.9 and int8 values; about 10 minutes
    # on 2 CPU cores, scored on 300 held-out reviews by the likelier of " positive" / " negative".
    "llm": {
        "task.name": "causal-lm",
        "task.chat-template": False,
        "model.path": "smollm2-135m-instruct",
        "model.max-length": 96,
        "federation.num-sites": 4,
        "rounds": 2,
        "local.steps": 12,
        "local.batch-size": 8,
        "local.lr": 5e-5,
        "prune.name": "dare",
        "prune.drop": 0.9,
        "quant.values": "int8",
        "data.test-size": 300,
        "data.max-site-examples": 400,
    },
    # Causal-LM instruction tuning on a 2-layer Llama built from a config: seconds, for tests.
    "llm-smoke": {
        "task.name": "causal-lm",
        "model.path": "tiny-llama",
        "federation.num-sites": 2,
        "rounds": 2,
        "local.steps": 3,
        "local.batch-size": 8,
        "local.lr": 1e-3,
        "data.test-size": 32,
        "data.max-site-examples": 32,
        "model.max-length": 48,
    },
}


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])
