"""The converted-model cache: a GGUF file turned once into a Hugging Face folder named by the file's sha256."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from fedelta.common.atomic import fsync_dir

CACHE_ENV = "FEDELTA_CACHE"
SOURCE_FILE = "fedelta-source.json"
TEMP_INFIX = ".tmp-"

Builder = Callable[[Path], None]
Converter = Callable[[Path, Path], None]


def cache_root() -> Path:
    """``$FEDELTA_CACHE/models``, else ``~/.cache/fedelta/models``."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedelta"
    return Path(base).expanduser() / "models"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached_folder(root: Path, key: str, build: Builder) -> Path:
    """``root/key``, built once by ``build(temp_folder)`` and renamed into place.

    Parties in other processes that ask for the same key at the same time wait
    on ``root/key.lock`` and then find the finished folder; a temp folder left
    by a crashed build is removed, never used.
    """
    target = root / key
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        for stale in root.glob(f"{key}{TEMP_INFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        temp = Path(tempfile.mkdtemp(dir=root, prefix=f"{key}{TEMP_INFIX}"))
        try:
            build(temp)
            _fsync_tree(temp)
            os.replace(temp, target)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        fsync_dir(root)
    return target


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    fsync_dir(folder)


def gguf_folder(gguf: Path, root: Path | None = None, convert: Converter | None = None) -> Path:
    """The Hugging Face folder converted from ``gguf``: ``<root>/<sha256 of the file>/``.

    ``root`` defaults to :func:`cache_root`, ``convert`` to :func:`convert_gguf`.
    """
    if not gguf.is_file():
        raise FileNotFoundError(f"no such GGUF file: {gguf}")
    sha256 = file_sha256(gguf)
    converter = convert or convert_gguf

    def build(out: Path) -> None:
        converter(gguf, out)
        (out / SOURCE_FILE).write_text(json.dumps(_source_record(gguf, sha256), indent=2) + "\n")

    return cached_folder(root or cache_root(), sha256, build)


def _source_record(gguf: Path, sha256: str) -> dict[str, str]:
    return {
        "gguf_file": gguf.name,
        "sha256": sha256,
        "gguf": version("gguf"),
        "transformers": version("transformers"),
    }


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into ``out`` as a causal LM folder: config, fp32 safetensors, tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
