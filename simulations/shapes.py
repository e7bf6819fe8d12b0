"""Tensor shapes the benchmarks build synthetic deltas on: a model folder's, MiniLM's, a 1.2B Llama's.

Nothing is downloaded: ``minilm`` reads the bundled all-MiniLM-L6-v2's
safetensors header (or any Hugging Face folder's) and adds a 2-label
classification head; ``llama-1b`` is written out from its configuration
(hidden 2048, 16 layers, 32 query and 8 key/value heads, intermediate 8192,
vocabulary 128,256, tied embeddings: 1.24B parameters).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

Shapes = dict[str, tuple[int, ...]]
HEAD_LABELS = 2
LLAMA_1B = {"layers": 16, "hidden": 2048, "intermediate": 8192, "vocab": 128_256, "heads": 32, "kv_heads": 8}


def folder_shapes(model_dir: Path) -> Shapes:
    """Every float tensor's shape in a model folder's safetensors files, plus a classification head."""
    import safetensors

    shapes: Shapes = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safetensors.safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                if piece.get_dtype() in ("F32", "F16", "BF16"):
                    shapes[name] = tuple(piece.get_shape())
    hidden = json.loads((Path(model_dir) / "config.json").read_text())["hidden_size"]
    shapes["classifier.weight"], shapes["classifier.bias"] = (HEAD_LABELS, hidden), (HEAD_LABELS,)
    return shapes


def minilm_shapes(model_dir: Path | None = None) -> Shapes:
    """The bundled MiniLM's shapes with a 2-label head (or those of ``model_dir``)."""
    from fedelta.common.model import bundled_model_path

    return folder_shapes(model_dir or bundled_model_path())


def llama_1b_shapes(model_dir: Path | None = None) -> Shapes:
    """The parameter shapes of a 1.2B-parameter Llama (Llama 3.2 1B's configuration); ``model_dir`` is unused."""
    h, f, layers = LLAMA_1B["hidden"], LLAMA_1B["intermediate"], LLAMA_1B["layers"]
    kv = h // LLAMA_1B["heads"] * LLAMA_1B["kv_heads"]
    shapes: Shapes = {"model.embed_tokens.weight": (LLAMA_1B["vocab"], h)}
    for i in range(layers):
        layer = f"model.layers.{i}"
        shapes[f"{layer}.input_layernorm.weight"] = (h,)
        shapes[f"{layer}.self_attn.q_proj.weight"], shapes[f"{layer}.self_attn.o_proj.weight"] = (h, h), (h, h)
        shapes[f"{layer}.self_attn.k_proj.weight"], shapes[f"{layer}.self_attn.v_proj.weight"] = (kv, h), (kv, h)
        shapes[f"{layer}.post_attention_layernorm.weight"] = (h,)
        shapes[f"{layer}.mlp.gate_proj.weight"], shapes[f"{layer}.mlp.up_proj.weight"] = (f, h), (f, h)
        shapes[f"{layer}.mlp.down_proj.weight"] = (h, f)
    shapes["model.norm.weight"] = (h,)
    return shapes


SHAPES: dict[str, Callable[[Path | None], Shapes]] = {"minilm": minilm_shapes, "llama-1b": llama_1b_shapes}
