"""Upload size against the information bound, and codec speed against plain zstd, on MiniLM's shapes.

``python -m fedelta.simulations.bench_codec --json`` builds a delta with every float
tensor shape of the bundled all-MiniLM-L6-v2 (read from its safetensors
header) plus a 2-label head, with Gaussian values of standard deviation
``--scale`` (default 1e-3, the size of a few hundred fine-tuning steps'
entries). For each density (0.1, 0.01, 0.001), mask (``explicit``: top-k by
magnitude, indices sent; ``seeded``: DARE's seeded mask, no indices) and value
type (fp16, int8) it prunes every tensor, encodes, and reports:

- ``bytes``: the encoded upload; ``bound_bytes``: the sum over tensors of
  log2 C(n_t, k_t) bits for positions (0 for a seeded mask) plus k x the value
  type's bits, in bytes; ``ratio_to_bound`` = bytes / bound_bytes;
- ``index_bytes``: the position part alone (Rice-coded gaps) and
  ``index_ratio_to_bound``: that over log2 C(n_t, k_t) bits (explicit masks);
- ``encode_vs_zstd`` / ``decode_vs_zstd``: median time of our encode / decode
  over median time of zstd level 3 compressing / decompressing the same delta
  as dense fp32 bytes, timed alternately in this process (``--repeats`` pairs),
  both on one thread.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CASES = [(d, mask, values) for d in (0.1, 0.01, 0.001) for mask in ("explicit", "seeded") for values in ("fp16", "int8")]
PRUNER_OF = {"explicit": "magnitude", "seeded": "dare"}
HEAD_LABELS = 2


def minilm_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every float tensor in the model folder's safetensors file, plus a classifier head."""
    import safetensors

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safetensors.safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                if piece.get_dtype() in ("F32", "F16", "BF16"):
                    shapes[name] = tuple(piece.get_shape())
    hidden = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    shapes["classifier.weight"], shapes["classifier.bias"] = (HEAD_LABELS, hidden), (HEAD_LABELS,)
    return shapes


def log2_binomial(n: int, k: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def paired_ratio(ours: Callable[[], object], reference: Callable[[], object], repeats: int) -> float:
    """Median of our time over the median of the reference's, timed alternately (GC off) so load hits both."""
    mine, theirs = [], []
    gc.disable()
    try:
        for _ in range(repeats):
            theirs.append(_seconds(reference))
            mine.append(_seconds(ours))
    finally:
        gc.enable()
    return statistics.median(mine) / statistics.median(theirs)


def run(scale: float, repeats: int, seed: int, model_dir: Path | None = None) -> dict[str, Any]:
    import torch
    import zstandard
    from tqdm.auto import tqdm

    from fedelta.common.codec import Limits, decode, encode, encode_index_gaps
    from fedelta.common.delta import Sparse
    from fedelta.common.model import bundled_model_path, model_name
    from fedelta.common.pruning import PruneRequest, prune_delta
    from fedelta.common.quantization import VALUE_TYPES

    torch.set_num_threads(1)  # zstd compresses on one thread too
    folder = model_dir or bundled_model_path()
    shapes = minilm_shapes(folder)
    generator = torch.Generator().manual_seed(seed)
    dense = {name: torch.randn(shape, generator=generator) * scale for name, shape in shapes.items()}
    numel = sum(t.numel() for t in dense.values())
    limits = Limits.for_model(numel)
    raw = b"".join(t.numpy().tobytes() for t in dense.values())
    compressor, decompressor = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    compressed = compressor.compress(raw)
    rows, pruned_cache = [], {}
    for density, mask, values in tqdm(CASES, desc="bench_codec", disable=not sys.stderr.isatty()):
        if (density, mask) not in pruned_cache:
            pruned_cache.clear()
            pruned_cache[(density, mask)] = prune_delta(dense, PRUNER_OF[mask], PruneRequest(density, seed))
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
        encode_ratio = paired_ratio(
            lambda: encode(pruned, base="0" * 64, values=values), lambda: compressor.compress(raw), repeats
        )
        decode_ratio = paired_ratio(lambda: decode(payload, limits), lambda: decompressor.decompress(compressed), repeats)
        rows.append({
            "case": f"{mask}/{values}/d={density:g}", "n": numel, "k": kept, "bytes": len(payload),
            "bound_bytes": round(bound), "ratio_to_bound": round(len(payload) / bound, 4),
            "encode_vs_zstd": round(encode_ratio, 4), "decode_vs_zstd": round(decode_ratio, 4),
            "index_bytes": index_bytes, "index_ratio_to_bound": round(index_bytes * 8 / position_bits, 4) if position_bits else None,
        })
    return {
        "model": model_name(str(folder)), "tensors": len(shapes), "value_scale": scale, "repeats": repeats,
        "dense_fp32_bytes": len(raw), "zstd3_bytes": len(compressed), "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["| case | n | k | bytes | bound bytes | ratio to bound | indices / their bound | encode / zstd | decode / zstd |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        index = "-" if row["index_ratio_to_bound"] is None else f"{row['index_ratio_to_bound']:.3f}"
        lines.append(f"| {row['case']} | {row['n']:,} | {row['k']:,} | {row['bytes']:,} | {row['bound_bytes']:,} | "
                     f"{row['ratio_to_bound']:.3f} | {index} | {row['encode_vs_zstd']:.3f} | {row['decode_vs_zstd']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument("--scale", type=float, default=1e-3, help="standard deviation of the Gaussian delta values")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs (ours, zstd) per measurement (median)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the values and DARE's mask")
    parser.add_argument("--model-dir", type=Path, help="a Hugging Face model folder (default: the bundled MiniLM)")
    args = parser.parse_args(argv)
    report = run(args.scale, args.repeats, args.seed, args.model_dir)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
