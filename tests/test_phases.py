"""Where a round's time goes: phases that add up to the round's seconds, from the sites' reports and the server's
clock, in metrics.jsonl, summary.md, phases.png and the console."""

import pytest
from rounds import assert_phases_add_up, open_federation, run_rounds

from fedelta.common import phases as phase_module
from fedelta.common import report
from fedelta.common.phases import PHASES, SITE_PHASES, site_metric
from fedelta.server.clock import RoundClock
from fedelta.server.console.app import create_app, round_charts


@pytest.fixture
def clock_reads(monkeypatch):
    """Make the clock read the given seconds, one per reading, so laps are exact."""
    def script(*readings: float) -> None:
        monkeypatch.setattr(phase_module.time, "perf_counter", iter(readings).__next__)

    return script


def _reply(**seconds: float) -> dict[str, float]:
    return {site_metric(name): value for name, value in seconds.items()}


def test_concurrent_sites_count_with_the_slowest_sites_figures_and_the_rest_is_transport(clock_reads):
    clock_reads(0, 0, 1, 2, 10, 11, 11, 12, 14, 14.5, 15)
    clock = RoundClock()
    clock.open()
    with clock.step("downlink"):  # after 1 s of waiting, 1 s of work
        pass
    clock.report("a", _reply(sync=1, train=2, encode=1))
    clock.report("b", _reply(sync=1, train=5, encode=1))  # the slowest: 7 s of the 9 s the server waited
    with clock.step("receive"):
        pass
    with clock.step("commit"):
        pass
    clock.committed()
    clock.report("a", _reply(sync=0.5, evaluate=0.25))  # 0.75 s of the 2 s waited for evaluation
    with clock.step("other"):
        pass

    seconds, phases = clock.close()

    assert seconds == 15 and sum(phases.values()) == 15
    assert (phases["site_sync"], phases["site_train"], phases["site_encode"], phases["site_evaluate"]) == (
        1.5, 5, 1, 0.25)
    assert phases["transport"] == 2 + 1.25 and phases["site_setup"] == phases["server_evaluate"] == 0
    assert (phases["downlink"], phases["receive"], phases["commit"], phases["other"]) == (1, 1, 1, 1)
    assert clock.site_means() == {"sync": 1.25, "train": 3.5, "encode": 1, "evaluate": 0.25}


def test_sites_in_turn_count_with_their_sum_and_figures_beyond_the_wait_are_scaled_to_fit_it(clock_reads):
    clock_reads(0, 0, 1, 1, 1)
    clock = RoundClock()
    clock.open(concurrent=False)
    clock.report("a", _reply(train=3, encode=1))
    clock.report("b", _reply(train=2, encode=float("nan"), sync=-4))  # NaN and negative figures count 0
    clock.report("liar", _reply(setup=1e9))
    with clock.step("receive"):  # the server waited 1 s for what they claim took 1e9 + 6 s
        pass

    seconds, phases = clock.close()

    assert seconds == 1 and sum(phases.values()) == pytest.approx(1)
    assert all(value >= 0 for value in phases.values()) and phases["transport"] == pytest.approx(0, abs=1e-12)
    assert phases["site_train"] == pytest.approx(5 / (1e9 + 6)) and phases["site_sync"] == 0


def test_a_step_must_name_a_phase():
    with pytest.raises(ValueError, match="unknown phase 'waiting'"), RoundClock().step("waiting"):
        pass
    with pytest.raises(ValueError, match="unknown site phase 'merge'"):
        site_metric("merge")


def test_an_in_process_round_reports_phases_that_add_up_in_every_result(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        coordinator.finish_round(0)
        run_rounds(coordinator, sites, range(1, 2))
        uploads = coordinator.store.site_rounds()
    out = tmp_path / "out"
    summary = report.write_summary(out, tiny_settings.to_run_config())
    rows = report.read_rows(out)

    for row in rows:
        assert_phases_add_up(row)
    initial, trained = rows
    assert {name for name, seconds in initial["phases"].items() if seconds} <= {"server_evaluate", "other"}
    assert [upload.site for upload in uploads] == ["site-0", "site-1"]
    for upload in uploads:  # each site's training seconds are its sync, training and encoding
        sent = upload.metrics
        assert sent[site_metric("sync")] + sent[site_metric("train")] + sent[site_metric("encode")] == pytest.approx(
            sent["seconds"])
    for name in ("train", "encode"):  # in process, sites train in turn: the phase is the sum of their figures
        assert trained["phases"][f"site_{name}"] == pytest.approx(sum(u.metrics[site_metric(name)] for u in uploads))
    assert set(trained["site_phases"]) == {"sync", "train", "encode", "evaluate"}
    assert trained["site_phases"]["train"] == pytest.approx(trained["phases"]["site_train"] / 2)
    assert not any(key.startswith("site_seconds") for key in trained)

    assert summary["phase_seconds"] == pytest.approx({name: initial["phases"][name] + trained["phases"][name]
                                                      for name in PHASES})
    markdown = (out / "summary.md").read_text()
    table = markdown.split("## Where the time went")[1]
    assert "| round | site_sync | site_train | site_encode | site_evaluate |" in table
    assert f"| 1 | {trained['phases']['site_sync']:.2f} |" in table and "| share |" in table
    assert (out / "phases.png").read_bytes()[:4] == b"\x89PNG"

    console = create_app(tmp_path / "state", None).test_client()
    api_rows = console.get("/api/rounds").get_json()
    assert [row["phases"] for row in api_rows] == [row["phases"] for row in rows]
    page = console.get("/rounds").get_data(as_text=True)
    assert "Seconds per round, by phase" in page and "site_train, round 1: " in page


def test_the_rounds_chart_stacks_each_rounds_phases_and_skips_those_that_never_occurred():
    rows = [{"round": n, "state": "finished", "upload_bytes": 1, "downlink_bytes": 1, "accuracy": 0.5,
             "phases": dict.fromkeys(PHASES, 0.0) | {"site_train": 2.0 + n, "commit": 0.5}} for n in (1, 2)]

    svg = round_charts(rows)["phases"]

    blocks = [part for part in svg.split("<rect")[1:] if "<title>" in part]
    assert len(blocks) == 4 and "site_train, round 2: 4.0 s" in svg and "commit, round 1: 0.5 s" in svg
    assert ">transport<" not in svg and ">site_train<" in svg


def test_the_phase_plot_puts_only_whole_rounds_on_its_axis():
    import matplotlib.pyplot as plt

    rows = [{"round": n, "phases": dict.fromkeys(PHASES, 0.5)} for n in range(3)]
    figure = report.phase_figure(rows)
    try:
        figure.canvas.draw()
        (axes,) = figure.axes
        ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks)
        assert len(axes.get_legend().get_texts()) == len(PHASES)
    finally:
        plt.close(figure)
