"""Memory and time of the server's streaming aggregation on a model's tensor shapes (MiniLM's or a 1.2B Llama's).

``python -m fedelta.simulations.bench_aggregate --json`` writes S synthetic sparse
deltas (explicit indices, density 0.01, fp16 values, encoded as sites send
them) to a temporary folder, then for each S in a fresh subprocess: builds
the base weights, decodes and aggregates one small delta so that the
process's one-off costs (loading the compiled kernels, ``first_calls_seconds``)
fall outside what is measured, then reads the deltas one at a time from
disk, decodes, checks and adds each into one accumulator with the weights
1..S scaled as the server scales them, and forms the merged delta. It
reports ``peak_extra_bytes`` (peak RSS during that, minus RSS after building
the base), ``peak_extra_over_model``, and ``seconds_vs_dense_pass``
(aggregation time over one dense fp32 add pass across the whole model, timed
in the same process), plus the same peak for the commit that follows as the
server makes it (``commit_peak_extra_over_model``: the merged delta encoded,
written to a file and added into the weights tensor by tensor, in chunks)
and the larger of the two (``round_peak_extra_over_model``). Three more
rounds over the same deltas, as a server's later rounds run, give
``later_rounds_seconds``, their median ``later_round_seconds`` and
``later_round_vs_dense_pass``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedelta.simulations.shapes import SHAPES, Shapes

BASE_SHA = "0" * 64
LATER_ROUNDS = 3  # rounds timed after the first, over the same deltas; their median is reported


def write_payloads(folder: Path, count: int, density: float, seed: int, shapes: Shapes) -> None:
    """``count`` encoded sparse deltas over every tensor of ``shapes``, one file each."""
    import numpy as np
    import torch

    from fedelta.common.codec import encode
    from fedelta.common.delta import Delta, Sparse
    from fedelta.common.delta import kept_count

    rng = np.random.default_rng(seed)
    for k in range(count):
        entries = {}
        for name, shape in shapes.items():
            numel = int(np.prod(shape))
            chosen = np.sort(rng.choice(numel, size=kept_count(numel, density), replace=False, shuffle=False))
            values = torch.from_numpy(rng.standard_normal(chosen.size).astype(np.float32) * 1e-3)
            entries[name] = Sparse(shape, torch.from_numpy(chosen.astype(np.int64)), values)
        (folder / f"{k}.bin").write_bytes(encode(Delta(entries), base=BASE_SHA, values="fp16"))


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Make the kernel's peak RSS (VmHWM) start again from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _first_calls(aggregator: str, limits: Any) -> None:
    """Decode, check and aggregate one small delta, so the round measured next pays none of a process's
    one-off costs (loading the compiled kernels from their cache, importing what a round uses)."""
    import numpy as np
    import torch

    from fedelta.common.aggregation import make_aggregator
    from fedelta.common.codec import decode, encode
    from fedelta.common.config import AggregateSettings
    from fedelta.common.delta import Delta, Sparse, check_delta_fits
    from fedelta.server.merge import scaled_weights

    shape = (64, 64)
    positions = torch.arange(0, 4096, 97)
    small = Delta({"w": Sparse(shape, positions, torch.full((positions.numel(),), 1e-3))})
    delta = decode(encode(small, base=BASE_SHA, values="fp16"), limits).delta
    check_delta_fits({"w": torch.zeros(shape)}, delta)
    merger = make_aggregator(AggregateSettings(name=aggregator), seed=0)
    merger.add(delta, scaled_weights([1.0])[0], key="first")
    np.asarray(merger.result().entries["w"].to_dense())


def _aggregate(sites: int, folder: Path, aggregator: str, base: dict[str, Any], limits: Any) -> tuple[Any, int]:
    """One round's aggregation as the server runs it: each delta read, decoded, checked and added in turn."""
    from fedelta.common.aggregation import make_aggregator
    from fedelta.common.codec import decode
    from fedelta.common.config import AggregateSettings
    from fedelta.common.delta import check_delta_fits
    from fedelta.server.merge import scaled_weights

    merger = make_aggregator(AggregateSettings(name=aggregator), seed=0)
    kept = 0
    for k, weight in enumerate(scaled_weights([float(k + 1) for k in range(sites)])):
        delta = decode((folder / f"{k}.bin").read_bytes(), limits).delta
        check_delta_fits(base, delta)
        kept += delta.count()
        merger.add(delta, weight, key=str(k))
        del delta
    return merger.result(), kept


def measure(sites: int, folder: Path, aggregator: str, density: float, shapes: Shapes) -> dict[str, Any]:
    """One S, in this (fresh) process."""
    import gc

    import torch

    from fedelta.common.codec import Limits
    from fedelta.common.config import DownlinkSettings
    from fedelta.server.downlink import MergedEncoder

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    base = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    model_bytes = sum(4 * p.numel() for p in base.values())
    limits = Limits.for_model(model_bytes // 4)
    started = time.perf_counter()
    _first_calls(aggregator, limits)
    first_calls = time.perf_counter() - started
    gc.collect()
    baseline = _status_bytes("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    merged, kept = _aggregate(sites, folder, aggregator, base, limits)
    seconds = time.perf_counter() - started
    peak = _status_bytes("VmHWM")
    _reset_peak()
    started = time.perf_counter()
    with open(folder / "merged.bin", "wb") as sink:
        MergedEncoder(DownlinkSettings(), 0, limits).encode_into(base, merged, sink, base=BASE_SHA, seed=1)
    commit_seconds = time.perf_counter() - started
    commit_peak = _status_bytes("VmHWM")
    del merged
    gc.collect()
    later_rounds = []
    for _ in range(LATER_ROUNDS):
        started = time.perf_counter()
        later, _ = _aggregate(sites, folder, aggregator, base, limits)
        later_rounds.append(time.perf_counter() - started)
        del later
        gc.collect()
    later_seconds = statistics.median(later_rounds)
    scratch = {name: torch.zeros_like(p) for name, p in base.items()}
    passes = []
    for _ in range(5):
        tick = time.perf_counter()
        for name, value in base.items():
            scratch[name].add_(value)
        passes.append(time.perf_counter() - tick)
    dense_pass = statistics.median(passes)
    return {
        "sites": sites,
        "aggregator": aggregator,
        "density": density,
        "kept_entries": kept,
        "model_bytes": model_bytes,
        "peak_extra_bytes": peak - baseline,
        "peak_extra_over_model": round((peak - baseline) / model_bytes, 3),
        "seconds": round(seconds, 3),
        "first_calls_seconds": round(first_calls, 3),
        "dense_pass_seconds": round(dense_pass, 4),
        "seconds_vs_dense_pass": round(seconds / dense_pass, 1),
        "later_rounds_seconds": [round(taken, 3) for taken in later_rounds],
        "later_round_seconds": round(later_seconds, 3),
        "later_round_vs_dense_pass": round(later_seconds / dense_pass, 1),
        "commit_seconds": round(commit_seconds, 3),
        "commit_peak_extra_over_model": round((commit_peak - baseline) / model_bytes, 3),
        "round_peak_extra_over_model": round((max(peak, commit_peak) - baseline) / model_bytes, 3),
    }


def run(site_counts: list[int], density: float, aggregator: str, shapes_name: str = "minilm") -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedelta-bench-") as tmp:
        folder = Path(tmp)
        write_payloads(folder, max(site_counts), density, seed=0, shapes=SHAPES[shapes_name](None))
        for sites in site_counts:
            command = [sys.executable, "-m", "fedelta.simulations.bench_aggregate", "--child", str(sites),
                       "--payloads", str(folder), "--density", str(density), "--aggregator", aggregator,
                       "--shapes", shapes_name]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"S={sites} failed: {done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"model": f"{shapes_name} shapes (synthetic values)", "shapes": shapes_name, "aggregator": aggregator,
            "density": density, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="4,16,64", help="comma-separated numbers of sites (default: 4,16,64)")
    parser.add_argument("--density", type=float, default=0.01, help="fraction of each tensor a delta carries")
    parser.add_argument("--aggregator", default="fedavg", help="aggregate.name (default: fedavg)")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="minilm",
                        help="tensor shapes of the base and the deltas: minilm (22.7M parameters) or llama-1b (1.24B; "
                             "the base alone takes 5 GB)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--payloads", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.payloads, args.aggregator, args.density, SHAPES[args.shapes](None))))
        return 0
    report = run([int(s) for s in args.sites.split(",")], args.density, args.aggregator, args.shapes)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['aggregator']} over {report['model']}, density {report['density']}")
    print(f"{'sites':>5} {'kept':>10} {'model MB':>9} {'peak extra MB':>14} {'x model':>8} {'x dense pass':>13} "
          f"{'later round':>12} {'commit x model':>15}")
    for row in report["rows"]:
        print(f"{row['sites']:>5} {row['kept_entries']:>10} {row['model_bytes'] / 1e6:>9.1f} "
              f"{row['peak_extra_bytes'] / 1e6:>14.1f} {row['peak_extra_over_model']:>8.3f} "
              f"{row['seconds_vs_dense_pass']:>13.1f} {row['later_round_vs_dense_pass']:>12.1f} "
              f"{row['commit_peak_extra_over_model']:>15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
