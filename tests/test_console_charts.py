"""The console's server-side SVG charts: round-numbered axes, escaped labels, gaps left out."""

import pytest

from fedelta.server.console.charts import Series, bar_chart, line_chart, nice_ticks


@pytest.mark.parametrize("low, high, expected", [
    (0.0, 1.0, [0.0, 0.25, 0.5, 0.75, 1.0]),
    (0.0, 43180.0, [0.0, 20000.0, 40000.0, 60000.0]),
    (0.0, 0.0, [0.0, 0.25, 0.5, 0.75, 1.0]),
])
def test_ticks_are_round_numbers_covering_the_range(low, high, expected):
    assert nice_ticks(low, high) == pytest.approx(expected)


def test_line_chart_draws_one_dot_per_value_and_escapes_text():
    svg = line_chart("<acc>", [0, 1, 2], [Series("a&b", [0.5, None, 0.75], "#123456")], lambda v: f"{v:.2f}")
    assert svg.startswith("<svg") and svg.count("<circle") == 2
    assert "&lt;acc&gt;" in svg and "a&amp;b" in svg and "<acc>" not in svg
    assert "round 2: 0.75" in svg


def test_bar_chart_draws_one_bar_per_value_from_zero():
    svg = bar_chart("bytes", [1, 2], [Series("up", [10.0, 20.0], "#1"), Series("down", [30.0, None], "#2")], str)
    bars = [part for part in svg.split("<rect")[1:] if "<title>" in part]
    assert len(bars) == 3 and "down, round 1: 30.0" in svg


def _round(number: int, **scores: float) -> dict:
    return {"round": number, "state": "finished", "upload_bytes": 10, "downlink_bytes": 20, **scores}


def test_rounds_chart_accuracy_where_the_task_has_it_and_else_the_loss():
    from fedelta.server.console.app import round_charts

    scored = round_charts([_round(0, accuracy=0.5, loss=0.7), _round(1, accuracy=0.8, loss=0.4)])
    assert "Accuracy per round" in scored["accuracy"] and "Loss per round" not in scored["accuracy"]
    open_ended = round_charts([_round(0, accuracy=None, loss=2.9, perplexity=18.2),
                               _round(1, accuracy=None, loss=1.1, perplexity=3.0)])
    assert "Loss per round" in open_ended["accuracy"] and open_ended["accuracy"].count("<circle") == 2
