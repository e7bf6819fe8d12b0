"""One round's time on the server's clock, split into the phases of :data:`fedelta.common.phases.PHASES`.

The round driver wraps each of its steps in :meth:`RoundClock.step`; the time
between steps is the wait for the sites: for their training replies until the
commit, for their evaluation replies after it (before a round opens, nothing is
awaited: ``other``). Each wait is split into the phases the sites report and
``transport`` (the rest). Sites that run at once (under Flower) wait in
parallel, so the slowest site's figures count; sites run one after another (in
process) count with the sum of theirs. A site's figures that exceed the wait
(a site may report anything) are scaled down to fit it, so every phase is at
least 0 and the phases add up to the round's seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from fedelta.common.phases import PHASES, SITE_PHASES, Stopwatch, reported

TRAINING, EVALUATING, IDLE = "wait-train", "wait-evaluate", "other"


class RoundClock:
    """Laps of one round by what the server did, and the phase seconds its sites reported."""

    def __init__(self) -> None:
        self.watch = Stopwatch()
        self.waiting = IDLE
        self.concurrent = True
        self.reports: dict[str, list[dict[str, float]]] = {TRAINING: [], EVALUATING: []}
        self.by_site: dict[str, dict[str, float]] = {}

    def open(self, *, concurrent: bool = True) -> None:
        """The round starts now, its sites training at once (``concurrent``) or one after another."""
        self.watch = Stopwatch()
        self.waiting, self.concurrent = TRAINING, concurrent
        self.reports = {TRAINING: [], EVALUATING: []}
        self.by_site = {}

    @contextmanager
    def step(self, phase: str) -> Iterator[None]:
        """The server does ``phase`` for the block; the time before it was spent waiting."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.watch.lap(self.waiting)
        try:
            yield
        finally:
            self.watch.lap(phase)

    def committed(self) -> None:
        """From now on the server waits for evaluation replies."""
        self.waiting = EVALUATING

    def report(self, site: str, metrics: Mapping[str, float]) -> None:
        """What ``site`` says its part of the current wait took (its reply metrics)."""
        figures = reported(metrics)
        if not figures:
            return
        if self.waiting in self.reports:
            self.reports[self.waiting].append(figures)
        mine = self.by_site.setdefault(site, {})
        for name, seconds in figures.items():
            mine[name] = mine.get(name, 0.0) + seconds

    def close(self) -> tuple[float, dict[str, float]]:
        """The round's seconds until now and their split into every phase (0 for one that did not occur)."""
        self.watch.lap("other")
        phases = dict.fromkeys(PHASES, 0.0)
        for name, seconds in self.watch.laps.items():
            if name not in self.reports:
                phases[name] += seconds
                continue
            share = self._sites_share(seconds, self.reports[name])
            for site_phase, part in share.items():
                phases[f"site_{site_phase}"] += part
            phases["transport"] += max(0.0, seconds - sum(share.values()))
        return self.watch.elapsed(), phases

    def _sites_share(self, wait: float, reports: list[dict[str, float]]) -> dict[str, float]:
        """The part of ``wait`` the sites' reported phases account for."""
        if not reports:
            return {}
        if self.concurrent:
            figures = max(reports, key=lambda report: sum(report.values()))
        else:
            figures = {name: sum(report.get(name, 0.0) for report in reports) for name in SITE_PHASES}
        total = sum(figures.values())
        scale = min(1.0, wait / total) if total > 0 else 0.0
        return {name: seconds * scale for name, seconds in figures.items()}

    def site_means(self) -> dict[str, float]:
        """Each reported phase's mean over the sites that reported it (a site's training and evaluation summed)."""
        means = {}
        for name in SITE_PHASES:
            values = [self.by_site[site][name] for site in sorted(self.by_site) if name in self.by_site[site]]
            if values:
                means[name] = sum(values) / len(values)
        return means
