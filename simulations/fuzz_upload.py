"""Hostile uploads through the server's admission path: ``python -m fedelta.simulations.fuzz_upload --n N``.

For each fine-tuning method whose uploads carry their own entry kinds (full:
dense, explicit indices and seeded masks; lora: factors; pafi: mask values;
svfit: singular offsets) a tiny federation's coordinator is built, honest
uploads are encoded for every value type (:mod:`fedelta.simulations.hostile_uploads`),
and N mutations of them (:mod:`fedelta.simulations.upload_mutators`) go through
:meth:`Coordinator.admitted`, what :meth:`Coordinator.receive` runs: decode
within the upload limits, resolve, validate against the head. Each ends as
accepted, or rejected by the decoder (``CodecError``), the resolver
(``Unresolved``) or validation (``Rejected``); anything else is a crash.
Printed: one line per outcome class, then ``payloads, crashes, hangs,
max_rss_growth_mb, accepted_bad`` (hang: one upload over 1 s of CPU time;
growth: peak resident memory during an upload over the resident memory
before the first; accepted_bad: an accepted upload with a name or shape not
the model's, a non-finite value or positions out of order or range).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HANG_SECONDS = 1.0
MAKER_TIMEOUT = 300
METHODS = ("full", "lora", "pafi", "svfit")


@dataclass(frozen=True)
class Admission:
    """One method's coordinator, its honest uploads, and what its mutators may know."""

    coordinator: Any
    honest: list[Any]
    target: Any


def federation(model: str, root: Path, seed: int) -> list[Admission]:
    """A coordinator per method in :data:`METHODS` on ``model``, each with its honest uploads."""
    from fedelta.common.config import Settings
    from fedelta.server.coordinator import Coordinator
    from fedelta.server.store import VersionStore
    from fedelta.simulations.hostile_uploads import Target, bombs, honest_uploads
    from fedelta.simulations.presets import preset

    built = []
    for method in METHODS:
        settings = Settings().with_overrides(
            {**preset("smoke"), "model.path": model, "method.name": method, "output.dir": str(root / method / "out")}
        )
        coordinator = Coordinator(settings, VersionStore(root / method / "state"), root / method / "out")
        honest = honest_uploads(method, coordinator.params, coordinator.allowed, coordinator.bundle.head,
                                coordinator.resolver, coordinator.head.sha, seed)
        built.append((coordinator, honest))
    limits = built[0][0].upload_limits
    shared_bombs = bombs(limits.max_bytes, built[0][1][0].payload)
    admissions = []
    for coordinator, honest in built:
        others = [upload.payload for other, uploads in built if other is not coordinator for upload in uploads]
        target = Target(coordinator.shapes, limits.max_elements, others, shared_bombs)
        admissions.append(Admission(coordinator, honest, target))
    return admissions


def admit(coordinator: Any, payload: bytes) -> tuple[str, str]:
    """Run one payload through the admission path: its outcome class and what was said (or broken)."""
    from fedelta.common.codec import CodecError
    from fedelta.common.delta import Unresolved
    from fedelta.server.validation import Rejected, update_norm

    try:
        delta = coordinator.admitted(payload)
        update_norm(delta)
    except CodecError as error:
        return "rejected by the decoder", str(error)
    except Rejected as error:
        return "rejected by validation", str(error)
    except Unresolved as error:
        return "rejected by the resolver", str(error)
    except Exception as error:  # noqa: BLE001 - what the fuzzer is for
        return f"crash {type(error).__name__}", str(error)
    broken = broken_invariant(delta, coordinator)
    return ("accepted_bad", broken) if broken else ("accepted", "")


def broken_invariant(delta: Any, coordinator: Any) -> str:
    """What an accepted delta breaks: a name outside the method, a shape not the model's, values, positions."""
    import torch

    for name, entry in delta.entries.items():
        if name not in coordinator.allowed or name not in coordinator.params:
            return f"{name!r} is not a tensor of the method"
        if entry.shape != tuple(coordinator.params[name].shape):
            return f"{name!r} has shape {entry.shape}"
        values = entry.flat_values().to(torch.float32)
        if not bool(torch.isfinite(values).all()):
            return f"{name!r} carries non-finite values"
        positions = entry.positions()
        if positions is None:
            if values.numel() != coordinator.params[name].numel():
                return f"{name!r}: {values.numel()} values for a dense entry"
            continue
        numel = coordinator.params[name].numel()
        if positions.numel() != values.numel() or (positions.numel() and (
                int(positions.min()) < 0 or int(positions.max()) >= numel or not bool((positions.diff() > 0).all()))):
            return f"{name!r}: positions out of range or order"
    return ""


class PeakMemory:
    """Resident memory now and its peak since the last reset (``/proc/self/clear_refs``; else sampled)."""

    def __init__(self) -> None:
        from fedelta.server.memory import rss_bytes

        self.now = rss_bytes
        self.resettable = self._reset()

    def _reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._reset()

    def peak(self) -> int:
        if not self.resettable:
            return self.now()
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.now()


def mutations(admissions: list[Admission], n: int, seed: int, queue: Any) -> None:
    """Put ``n`` mutated payloads on ``queue`` as (admission index, honest label, mutation, bytes), then ``None``.

    A mutator that fails sends ``None`` for the bytes and its error as the mutation.
    """
    import numpy as np

    from fedelta.simulations.upload_mutators import mutate

    rng = np.random.default_rng(seed)
    for _ in range(n):
        index = int(rng.integers(len(admissions)))
        honest = admissions[index].honest[int(rng.integers(len(admissions[index].honest)))]
        try:
            queue.put((index, honest.label, *mutate(honest.payload, rng, admissions[index].target)))
        except Exception as error:  # noqa: BLE001 - a broken mutator is reported, not mistaken for a decoder crash
            queue.put((index, honest.label, f"mutator error {error!r}", None))
    queue.put(None)


@dataclass
class Tally:
    """What the fuzzer saw: outcomes with an example of each, CPU and wall time per upload, peak memory growth."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    cpu: list[float] = field(default_factory=list)
    max_cpu: float = 0.0
    slowest: str = ""
    longest_wall: float = 0.0
    growth: int = 0

    def add(self, outcome: str, example: str, cpu: float | None = None, wall: float = 0.0, growth: int = 0) -> None:
        """One outcome; ``cpu`` is ``None`` for a payload that was never made (a mutator error)."""
        self.counts[outcome] += 1
        self.examples.setdefault(outcome, example)
        if cpu is None:
            return
        if cpu > self.max_cpu:
            self.max_cpu, self.slowest = cpu, f"{example.split(':')[0]}: {outcome}"
        self.cpu.append(cpu)
        self.longest_wall, self.growth = max(self.longest_wall, wall), max(self.growth, growth)

    def summary(self, seconds: float, drift: int, sampled: bool) -> dict[str, Any]:
        payloads = sum(self.counts.values()) - self.counts["mutator error"]
        return {
            "counts": dict(self.counts), "examples": self.examples, "payloads": payloads,
            "crashes": sum(count for outcome, count in self.counts.items() if outcome.startswith("crash")),
            "hangs": sum(cpu > HANG_SECONDS for cpu in self.cpu), "max_rss_growth_mb": self.growth / 2**20,
            "accepted_bad": self.counts["accepted_bad"],
            "max_cpu_seconds": self.max_cpu, "slowest_upload": self.slowest,
            "median_cpu_ms": 1e3 * statistics.median(self.cpu or [0.0]),
            "p99_cpu_ms": 1e3 * (statistics.quantiles(self.cpu, n=100)[98] if len(self.cpu) > 1 else 0.0),
            "max_wall_seconds": self.longest_wall, "admission_cpu_seconds": sum(self.cpu), "seconds": seconds,
            "rss_drift_mb": drift / 2**20, "peak_is_sampled": sampled,
        }


def run(n: int, seed: int, model: str) -> dict[str, Any]:
    """Fuzz ``n`` payloads; the counts by outcome, an example of each, and the summary figures.

    The payloads are made in a forked process, so this one's memory holds only what admitting them takes.
    """
    import multiprocessing

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        admissions = federation(model, Path(folder), seed)
        for admission in admissions:
            for upload in admission.honest:
                outcome, detail = admit(admission.coordinator, upload.payload)
                if outcome != "accepted":
                    raise RuntimeError(f"honest upload {upload.label} was not accepted: {outcome}: {detail}")
        context = multiprocessing.get_context("fork")
        queue = context.Queue(maxsize=64)
        maker = context.Process(target=mutations, args=(admissions, n, seed, queue), daemon=True)
        maker.start()
        memory, tally, started = PeakMemory(), Tally(), time.perf_counter()
        baseline = memory.now()
        while (item := queue.get(timeout=MAKER_TIMEOUT)) is not None:
            index, label, mutation, payload = item
            if payload is None:
                tally.add("mutator error", f"{label} {mutation}")
                continue
            memory.reset()
            cpu, wall = time.process_time(), time.perf_counter()
            outcome, detail = admit(admissions[index].coordinator, payload)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            del payload, item
            example = f"{label} {mutation}: {' '.join(detail.split())[:160]}"
            tally.add(outcome, example, cpu, wall, memory.peak() - baseline)
        maker.join()
        result = tally.summary(time.perf_counter() - started, memory.now() - baseline, not memory.resettable)
        for admission in admissions:
            admission.coordinator.store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="payloads to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny-bert", help="model.path of the federation (a tiny one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(args.n, args.seed, args.model)
    for outcome, count in sorted(result["counts"].items(), key=lambda item: -item[1]):
        print(f"{count:>8}  {outcome:<26} e.g. {result['examples'][outcome]}")
    print(f"cpu_ms median={result['median_cpu_ms']:.2f} p99={result['p99_cpu_ms']:.2f}; "
          f"max_cpu_seconds={result['max_cpu_seconds']:.3f} ({result['slowest_upload']}) "
          f"max_wall_seconds={result['max_wall_seconds']:.3f} "
          f"admission_cpu_seconds={result['admission_cpu_seconds']:.0f} seconds={result['seconds']:.0f} "
          f"rss_drift_mb={result['rss_drift_mb']:.1f}"
          + (" (peak sampled after each upload)" if result["peak_is_sampled"] else ""))
    print(f"payloads={result['payloads']} crashes={result['crashes']} hangs={result['hangs']} "
          f"max_rss_growth_mb={result['max_rss_growth_mb']:.1f} accepted_bad={result['accepted_bad']}")


if __name__ == "__main__":
    main()
