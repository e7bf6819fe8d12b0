"""Run results on disk: the plot's round axes carry whole rounds only."""

from fedelta.common.report import round_figure


def _row(number: int) -> dict:
    return {"round": number, "accuracy": 0.5 + number / 100, "upload_bytes": 10 + number,
            "dense_update_bytes": 1000 * (number > 0)}


def test_the_plot_puts_only_whole_rounds_on_its_axes():
    import matplotlib.pyplot as plt

    figure = round_figure([_row(n) for n in range(4)])
    try:
        figure.canvas.draw()
        for axes in figure.axes:
            ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
            assert ticks and all(float(tick).is_integer() for tick in ticks)
    finally:
        plt.close(figure)
