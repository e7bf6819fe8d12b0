"""Upload size against the information bound, and codec speed against plain zstd, on a model's tensor shapes.

``python -m fedelta.simulations.bench_codec --json`` builds a delta with every
tensor shape of ``--shapes`` (``minilm``: the bundled all-MiniLM-L6-v2's, read
from its safetensors header, plus a 2-label head; ``llama-1b``: a 1.2B Llama's;
see :mod:`fedelta.simulations.shapes`) with Gaussian values of standard
deviation ``--scale`` (default 1e-3, the size of a few hundred fine-tuning
steps' entries), one tensor at a time, so that no dense copy of the whole model
is held. For each density (``--densities``), mask (``explicit``: top-k by
magnitude, indices sent; ``seeded``: DARE's seeded mask, no indices) and value
type (fp16, int8) it prunes every tensor, encodes, and reports:

- ``bytes``: the encoded upload; ``bound_bytes``: the sum over tensors of
  log2 C(n_t, k_t) bits for positions (0 for a seeded mask) plus k x the value
  type's bits, in bytes; ``ratio_to_bound`` = bytes / bound_bytes;
- ``index_bytes``: the position part alone (Rice-coded gaps) and
  ``index_ratio_to_bound``: that over log2 C(n_t, k_t) bits (explicit masks);
- ``encode_vs_zstd`` / ``decode_vs_zstd``: median time of our encode / decode
  (parsing the payload and finding every entry's positions: a decoded
  seeded mask draws its positions when they are first asked for) over the
  time zstd level 3 takes to compress / decompress the same delta as dense
  fp32 bytes (each tensor's median over ``--repeats``, summed; measured
  first, in this process), and ``encode_vs_unzstd``: our encode over that
  decompression time; all on one thread;
- for seeded masks, ``mask_temp_bytes``: the most memory that drawing one
  tensor's positions took beyond the int64 positions it returns (traced),
  and ``mask_temp_bytes_per_kept``: that memory over the kept count, at the
  tensor with the most kept entries.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedelta.simulations.shapes import SHAPES, Shapes

DENSITIES = (0.1, 0.01, 0.001)
MASKS = ("explicit", "seeded")
VALUES = ("fp16", "int8")
CASES = [(d, mask, values) for d in DENSITIES for mask in MASKS for values in VALUES]
PRUNER_OF = {"explicit": "magnitude", "seeded": "dare"}


def log2_binomial(n: int, k: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def _median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _tensor(shape: tuple[int, ...], index: int, seed: int, scale: float):
    """Tensor number ``index``'s synthetic delta: Gaussian values, the same for every case."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn(shape, generator=generator) * scale


def zstd_reference(shapes: Shapes, scale: float, seed: int, repeats: int) -> dict[str, float]:
    """Dense fp32 bytes, their zstd-3 size, and its compress / decompress seconds, tensor by tensor."""
    import zstandard

    compressor, decompressor = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    total = {"dense_fp32_bytes": 0, "zstd3_bytes": 0, "zstd_compress_seconds": 0.0, "zstd_decompress_seconds": 0.0}
    for index, shape in enumerate(shapes.values()):
        raw = _tensor(shape, index, seed, scale).numpy().tobytes()
        compressed = compressor.compress(raw)
        total["dense_fp32_bytes"] += len(raw)
        total["zstd3_bytes"] += len(compressed)
        total["zstd_compress_seconds"] += _median_seconds(lambda: compressor.compress(raw), repeats)
        total["zstd_decompress_seconds"] += _median_seconds(lambda: decompressor.decompress(compressed), repeats)
    return total


def pruned_delta(shapes: Shapes, mask: str, density: float, scale: float, seed: int):
    """The synthetic delta pruned to ``density`` with ``mask``'s pruner, built one tensor at a time."""
    from fedelta.common.delta import Delta
    from fedelta.common.pruning import PruneRequest, prune_delta

    request, entries = PruneRequest(density, seed), {}
    for index, (name, shape) in enumerate(shapes.items()):
        entries[name] = prune_delta({name: _tensor(shape, index, seed, scale)}, PRUNER_OF[mask], request).entries[name]
    return Delta(entries)


def mask_memory(delta) -> tuple[int, float]:
    """The most traced memory drawing one seeded entry's positions took beyond its result (a constant: one
    chunk of draws), and that memory per kept entry at the entry with the most kept entries."""
    from fedelta.common.delta import SeededMask, seeded_positions

    worst, largest = 0, (0, 0)
    for entry in delta.entries.values():
        if not isinstance(entry, SeededMask):
            continue
        tracemalloc.start()
        try:
            positions = seeded_positions(entry.seed, entry.name, math.prod(entry.shape), entry.keep)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        extra = max(0, peak - positions.numel() * positions.element_size())
        worst = max(worst, extra)
        largest = max(largest, (positions.numel(), extra))
    kept, extra = largest
    return worst, extra / kept if kept else 0.0


def _positions_and_values(delta: Any) -> int:
    """What a receiver needs to add ``delta`` anywhere: every entry's positions and values (their count)."""
    total = 0
    for entry in delta.entries.values():
        positions = entry.positions()
        total += entry.flat_values().numel() + (0 if positions is None else positions.numel())
    return total


def run(
    scale: float, repeats: int, seed: int, model_dir: Path | None = None, shapes_name: str = "minilm",
    densities: tuple[float, ...] = DENSITIES,
) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from fedelta.common.codec import Limits, decode, encode, encode_index_gaps
    from fedelta.common.delta import Sparse
    from fedelta.common.model import model_name
    from fedelta.common.quantization import VALUE_TYPES

    torch.set_num_threads(1)  # zstd compresses on one thread too
    shapes = SHAPES[shapes_name](model_dir)
    numel = sum(math.prod(shape) for shape in shapes.values())
    limits = Limits.for_model(numel)
    reference = zstd_reference(shapes, scale, seed, repeats)
    cases = [(d, mask, values) for d in densities for mask in MASKS for values in VALUES]
    rows, pruned_cache = [], {}
    for density, mask, values in tqdm(cases, desc="bench_codec", disable=not sys.stderr.isatty()):
        if (density, mask) not in pruned_cache:
            pruned_cache.clear()
            pruned_cache[(density, mask)] = pruned_delta(shapes, mask, density, scale, seed)
        pruned = pruned_cache[(density, mask)]
        kept = pruned.count()
        position_bits = sum(
            log2_binomial(math.prod(entry.shape), entry.count)
            for entry in pruned.entries.values() if isinstance(entry, Sparse)
        )
        bound = (position_bits + kept * VALUE_TYPES.get(values).bits) / 8
        index_bytes = sum(
            encode_index_gaps(entry.indices.numpy()).size for entry in pruned.entries.values() if isinstance(entry, Sparse)
        )
        payload = encode(pruned, base="0" * 64, values=values)
        encode_seconds = _median_seconds(lambda: encode(pruned, base="0" * 64, values=values), repeats)
        decode_seconds = _median_seconds(lambda: _positions_and_values(decode(payload, limits).delta), repeats)
        row = {
            "case": f"{mask}/{values}/d={density:g}", "n": numel, "k": kept, "bytes": len(payload),
            "bound_bytes": round(bound), "ratio_to_bound": round(len(payload) / bound, 4),
            "encode_vs_zstd": round(encode_seconds / reference["zstd_compress_seconds"], 4),
            "decode_vs_zstd": round(decode_seconds / reference["zstd_decompress_seconds"], 4),
            "encode_vs_unzstd": round(encode_seconds / reference["zstd_decompress_seconds"], 4),
            "seconds": {"encode": round(encode_seconds, 4), "decode": round(decode_seconds, 4)},
            "index_bytes": index_bytes, "index_ratio_to_bound": round(index_bytes * 8 / position_bits, 4) if position_bits else None,
        }
        if mask == "seeded":
            row["mask_temp_bytes"], per_kept = mask_memory(pruned)
            row["mask_temp_bytes_per_kept"] = round(per_kept, 3)
        rows.append(row)
    return {
        "shapes": shapes_name, "model": model_name(str(model_dir)) if model_dir else shapes_name,
        "tensors": len(shapes), "value_scale": scale, "repeats": repeats,
        **{key: round(value, 4) if isinstance(value, float) else value for key, value in reference.items()},
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["| case | n | k | bytes | bound bytes | ratio to bound | indices / their bound | encode / zstd | "
             "decode / unzstd | encode / unzstd | mask scratch per kept |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        index = "-" if row["index_ratio_to_bound"] is None else f"{row['index_ratio_to_bound']:.3f}"
        scratch = f"{row['mask_temp_bytes_per_kept']:.2f} B" if "mask_temp_bytes" in row else "-"
        lines.append(f"| {row['case']} | {row['n']:,} | {row['k']:,} | {row['bytes']:,} | {row['bound_bytes']:,} | "
                     f"{row['ratio_to_bound']:.3f} | {index} | {row['encode_vs_zstd']:.3f} | {row['decode_vs_zstd']:.3f} | "
                     f"{row['encode_vs_unzstd']:.3f} | {scratch} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument("--scale", type=float, default=1e-3, help="standard deviation of the Gaussian delta values")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs (ours, zstd) per measurement (median)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the values and DARE's mask")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="minilm",
                        help="tensor shapes of the synthetic delta: minilm (the bundled model's, or --model-dir's) or "
                             "llama-1b (a 1.2B Llama's; about 5 GB of fp32 values, built one tensor at a time)")
    parser.add_argument("--model-dir", type=Path, help="with --shapes minilm: a Hugging Face model folder to read shapes from")
    parser.add_argument("--densities", default=",".join(f"{d:g}" for d in DENSITIES),
                        help="comma-separated densities to measure (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        densities = tuple(float(d) for d in args.densities.split(","))
    except ValueError:
        parser.error(f"--densities: not a comma-separated list of numbers: {args.densities!r}")
    if not all(0.0 < d <= 1.0 for d in densities):
        parser.error(f"--densities: each must be in (0, 1], got {args.densities!r}")
    report = run(args.scale, args.repeats, args.seed, args.model_dir, args.shapes, densities)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
