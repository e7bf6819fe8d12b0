"""The Flower ServerApp: read settings, open the store, run DeltaFedAvg, write the results."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedelta.common import report
from fedelta.common.config import Settings
from fedelta.server import control
from fedelta.server.coordinator import Coordinator
from fedelta.server.grid import CountingGrid
from fedelta.server.progress import RoundProgress, terminal
from fedelta.server.rounds import RoundDriver
from fedelta.server.store import VersionStore
from fedelta.server.strategy import DeltaFedAvg

app = ServerApp()
log = logging.getLogger("fedelta.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_run_config(context.run_config)
    out_dir = Path(settings.output.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = RoundProgress(terminal())
    store = VersionStore(Path(settings.output.state_dir) if settings.output.state_dir else out_dir / "state")
    try:
        coordinator = Coordinator(settings, store, out_dir)
        driver = RoundDriver(coordinator)
        federation = settings.federation
        strategy = DeltaFedAvg(
            driver,
            progress,
            fraction_train=federation.fraction_train,
            fraction_evaluate=federation.fraction_train,
            min_train_nodes=federation.min_sites,
            min_evaluate_nodes=federation.min_sites,
            min_available_nodes=federation.min_sites,
        )
        remaining = max(0, settings.rounds - coordinator.rounds.last)
        if coordinator.rounds.last:
            progress.line(f"resuming after round {coordinator.rounds.last} at version {coordinator.head.id} "
                          f"({coordinator.head.sha[:12]}); {remaining} of {settings.rounds} rounds left")
        metrics = coordinator.task.metric_names
        progress.line(report.table_header(metrics))

        def finish(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            server_round = driver.store_round(server_round)
            progress.phase(server_round, "server evaluating")
            row = driver.finish(server_round)
            progress.line(report.table_row(row, metrics))
            return MetricRecord({name: row[name] for name in metrics if row.get(name) is not None})

        strategy.start(
            grid=CountingGrid(grid, progress.sites_done),
            initial_arrays=ArrayRecord(),
            num_rounds=remaining,
            train_config=ConfigRecord({"genesis-sha": coordinator.genesis_sha}),
            evaluate_fn=finish,
        )
        control.write_status(store, "finished", coordinator.rounds.last + remaining)
        summary = report.write_summary(out_dir, settings.to_run_config())
        log.info("final loss %.4f, accuracy %s, upload reduction %.1fx", summary["final_loss"],
                 summary["final_accuracy"], summary["upload_reduction"])
    finally:
        progress.close()
        store.close()
