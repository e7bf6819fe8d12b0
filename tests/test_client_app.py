"""The ClientApp keeps the simulated sites it served between messages, a bounded number of them."""

from flwr.app import Context, RecordDict

from fedelta.client import app


def _context(run_config: dict, partition: int, **node) -> Context:
    return Context(run_id=1, node_id=partition, node_config={"partition-id": partition, "num-partitions": 2, **node},
                   state=RecordDict(), run_config=run_config)


def test_a_simulated_site_is_built_once_per_process_and_run(tiny_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "_kept", type(app._kept)())
    run = tiny_settings.to_run_config()
    first = app._site(_context(run, 0))
    assert app._site(_context(run, 0)) is first and first.keep_weights
    assert app._site(_context(run, 1)) is not first
    other_run = app._site(_context({**run, "seed": 1}, 0))
    assert other_run is not first and other_run.settings.seed == 1

    monkeypatch.setattr(app, "SITES_KEPT", 2)
    app._site(_context(run, 1))
    assert app._site(_context(run, 0)) is not first  # the least recently served of three was let go


def test_a_deployed_site_is_built_for_each_message_and_keeps_no_weights(tiny_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "_kept", type(app._kept)())
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(20)))
    context = _context(tiny_settings.to_run_config(), 0, **{"data-path": str(data), "site-name": "clinic"})
    site = app._site(context)
    assert app._site(context) is not site and not site.keep_weights and not app._kept
