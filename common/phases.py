"""Where a round's time goes: the phase names of ``metrics.jsonl``'s ``phases``, the seconds sites report, and
the stopwatch both sides time them with.

A round's ``phases`` add up to its ``seconds``. The sites' phases come from
what the sites report (the slowest site's figures when sites run at once under
Flower, the sum when they run one after another in process); ``transport`` is
the rest of the server's wait for their replies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

# Every phase of a round, in the order they are stacked, with what it measures.
PHASES: dict[str, str] = {
    "site_setup": "sites building their site for a message: settings, data, partition (Flower's ClientApp)",
    "site_sync": "sites loading the model and applying the downlink, checked by hash",
    "site_train": "sites' local training, with attaching the method and building the optimizer",
    "site_encode": "sites forming, pruning (calibration and recovery included) and encoding their delta",
    "site_evaluate": "sites evaluating on their local test split",
    "transport": "transport and waiting: the rest of the wait for the sites' replies",
    "downlink": "the server forming each site's downlink",
    "receive": "the server decoding and validating each upload as it arrives",
    "commit": "the server merging the admitted uploads (decoded again), encoding and storing the new version",
    "server_evaluate": "the server evaluating the new version on its held-out test set",
    "other": "the rest of the server's time: acknowledgements, records, the engine's work between steps",
}
# Each phase's colour in the console's chart and phases.png: the sites' in blues and teals, the wait for them in
# grey, the server's in warm colours and violet.
PHASE_COLORS = dict(zip(PHASES, ("#a5b4fc", "#60a5fa", "#2563eb", "#0d9488", "#5eead4", "#9ca3af", "#f59e0b",
                                 "#f97316", "#dc2626", "#7c3aed", "#d1d5db"), strict=True))
# What a site reports, each as the reply metric ``seconds-<name>``; it is the phase ``site_<name>``.
SITE_PHASES = ("setup", "sync", "train", "encode", "evaluate")


def site_metric(name: str) -> str:
    """The reply metric a site reports phase ``name`` under."""
    if name not in SITE_PHASES:
        raise ValueError(f"unknown site phase {name!r}; known: {', '.join(SITE_PHASES)}")
    return f"seconds-{name}"


def reported(metrics: Mapping[str, float]) -> dict[str, float]:
    """The phase seconds in a site's reply metrics; a value that is not a finite number of at least 0 counts 0."""
    found = {}
    for name in SITE_PHASES:
        value = metrics.get(site_metric(name))
        if value is not None:
            found[name] = float(value) if isinstance(value, int | float) and math.isfinite(value) and value > 0 else 0.0
    return found


class Stopwatch:
    """Laps of one clock, by name: together they are the time from the start to the last lap."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> float:
        """Add the time since the last lap to ``name``; that time."""
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        self.laps[name] = self.laps.get(name, 0.0) + seconds
        return seconds

    def elapsed(self) -> float:
        """From the start to the last lap."""
        return self.last - self.start

    def site_metrics(self) -> dict[str, float]:
        """The laps as the reply metrics a site reports them in."""
        return {site_metric(name): seconds for name, seconds in self.laps.items()}
