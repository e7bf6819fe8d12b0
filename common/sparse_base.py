"""Prune Once for All: gradual magnitude pruning of the base while distilling from the dense base.

The body's weight matrices (no embeddings, no task head, no norms or biases)
are pruned on a cubic schedule to ``sparsity`` over the first three quarters of
the steps (in 20 increments), keeping in each matrix exactly
``round(sparsity * numel)`` zeros (the smallest magnitudes, ties by index); the
student learns to reproduce the dense teacher's hidden states (and pooled
output) on unlabelled text, with the pruned weights held at zero and the
embeddings (never pruned) frozen. The result is a Hugging Face model folder.
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fedelta.common.codec import encode
from fedelta.common.config import DataSettings
from fedelta.common.data import hold_out, load_corpus
from fedelta.common.delta import Delta, Dense, model_params
from fedelta.common.methods.registry import weight_matrices
from fedelta.common.model import load_model
from fedelta.common.sparsity import lock_pattern, sparsity_report

REPORT_FILE = "sparsity.json"
RAMP = 0.75  # share of the steps over which sparsity rises to its target


@dataclass(frozen=True)
class SparseBaseRequest:
    sparsity: float
    out: str
    model: str = ""
    steps: int = 200
    batch_size: int = 16
    max_length: int = 64
    lr: float = 1e-4
    data: str = "rotten-tomatoes"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.sparsity < 1:
            raise ValueError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        if self.steps < 0:
            raise ValueError(f"--steps must be >= 0, got {self.steps}")
        if self.batch_size < 1 or not 0 < self.lr < 1:
            raise ValueError("--batch-size must be >= 1 and --lr in (0, 1)")


def cubic_sparsity(step: int, ramp_steps: int, final: float) -> float:
    """Sparsity after ``step`` of ``ramp_steps``: ``final * (1 - (1 - t)^3)``, ``final`` from the ramp's end on."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return final
    return final * (1.0 - (1.0 - step / ramp_steps) ** 3)


def prune_smallest(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``round(sparsity * numel)`` smallest |weights| (ties by index) in place; returns the pruned mask."""
    flat = weight.detach().reshape(-1)
    count = round(sparsity * flat.numel())
    pruned = torch.zeros(flat.numel(), dtype=torch.bool)
    if count:
        order = torch.sort(flat.abs(), stable=True).indices
        pruned[order[:count]] = True
    with torch.no_grad():
        flat.masked_fill_(pruned, 0.0)
    return pruned.reshape(weight.shape)


def distillation_texts(data: str, seed: int) -> list[str]:
    """Unlabelled text of a bundled corpus, without the server's default held-out test set."""
    corpus = load_corpus(DataSettings(name=data))
    pool, _ = hold_out(corpus, DataSettings().test_size, seed)
    return [corpus.texts[i] for i in pool]


def _hidden(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    output = model.base_model(**inputs, output_hidden_states=True)
    states = list(output.hidden_states)
    pooled = getattr(output, "pooler_output", None)
    return states + ([pooled] if pooled is not None else [])


def _distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every hidden state (real tokens only) and the pooled output."""
    weights = mask.unsqueeze(-1).to(torch.float32)
    losses = []
    for s, t in zip(student, teacher, strict=True):
        if s.dim() == 3:
            losses.append(((s - t) ** 2 * weights).sum() / (weights.sum() * s.shape[-1]))
        else:
            losses.append(((s - t) ** 2).mean())
    return torch.stack(losses).mean()


def prepare_sparse_base(request: SparseBaseRequest) -> dict[str, object]:
    """Prune the base once, distilling from the dense base; write the model folder and its report."""
    torch.manual_seed(request.seed)
    teacher = load_model(request.model, 2, request.seed)
    student = load_model(request.model, 2, request.seed)
    params = dict(student.model.named_parameters())
    dense_bytes = _body_bytes(model_params(teacher.model), teacher.head)
    names = weight_matrices(params, student.head)
    frozen = set(student.head) | {name for name in params if "embed" in name}
    trainable = [p for n, p in params.items() if n not in frozen]
    for name, param in params.items():
        param.requires_grad_(name not in frozen)
    optimizer = torch.optim.AdamW(trainable, lr=request.lr, weight_decay=0.0)
    texts = distillation_texts(request.data, request.seed) if request.steps else []
    rng = random.Random(request.seed)
    ramp = math.ceil(RAMP * request.steps)
    every = max(1, ramp // 20)
    pattern: dict[str, torch.Tensor] = {}
    removers: list = []
    last_loss: float | None = None
    student.model.train()
    with tqdm(total=request.steps, desc=f"prune to {request.sparsity:g}", disable=not sys.stderr.isatty()) as bar:
        for step in range(request.steps):
            if step <= ramp and (step % every == 0 or step == ramp):
                target = cubic_sparsity(step, ramp, request.sparsity)
                pattern = {name: prune_smallest(params[name], target) for name in names}
                for remove in removers:
                    remove()
                removers = lock_pattern(student.model, pattern)
            batch = [texts[rng.randrange(len(texts))] for _ in range(request.batch_size)]
            inputs = student.tokenizer(batch, padding=True, truncation=True, max_length=request.max_length,
                                       return_tensors="pt")
            with torch.no_grad():
                wanted = _hidden(teacher.model, inputs)
            loss = _distillation_loss(_hidden(student.model, inputs), wanted, inputs["attention_mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for name, pruned in pattern.items():
                    params[name].masked_fill_(pruned, 0.0)
            last_loss = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", sparsity=f"{cubic_sparsity(step, ramp, request.sparsity):.3f}")
    for remove in removers:
        remove()
    for name in names:
        prune_smallest(params[name], request.sparsity)
    student.model.eval()
    return _write(student, request, dense_bytes, last_loss)


def _body_bytes(params: dict[str, torch.Tensor], head: list[str]) -> int:
    """The body's weights as one zstd-compressed fp32 blob of the wire format (zeros as index gaps where smaller)."""
    entries = {n: Dense(v.clone()) for n, v in params.items() if n not in head}
    return len(encode(Delta(entries), base="", values="fp32"))


def _write(student, request: SparseBaseRequest, dense_bytes: int, last_loss: float | None) -> dict[str, object]:
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    student.model.base_model.save_pretrained(str(out))
    student.tokenizer.save_pretrained(str(out))
    params = model_params(student.model)
    sparse_bytes = _body_bytes(params, student.head)
    report = {
        "request": asdict(request),
        **sparsity_report(params, student.head),
        "final_distillation_loss": last_loss,
        "bytes": {
            "safetensors": sum(f.stat().st_size for f in out.glob("*.safetensors")),
            "dense_body_zstd": dense_bytes,
            "sparse_body_zstd": sparse_bytes,
        },
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
