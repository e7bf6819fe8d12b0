"""What the ServerApp shows a person: its lines (the round table) and, on a terminal, one progress bar per round.

Output goes to the file descriptor named by ``FEDELTA_TERMINAL_FD`` when it is
set (``fedelta simulate`` sets it to its terminal while Flower's, Ray's and
transformers' output goes to ``OUT/engine.log``), else to standard output (a
deployed ServerApp, whose output ``fedelta server`` streams). The bar shows the
round, its phase and, while sites work, how many of the sampled sites are done;
it is cleared before each line is written and drawn only on a terminal.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm.auto import tqdm

TERMINAL_FD = "FEDELTA_TERMINAL_FD"


def terminal() -> TextIO:
    """Where the ServerApp's lines go: the descriptor in ``FEDELTA_TERMINAL_FD``, or standard output."""
    fd = os.environ.get(TERMINAL_FD)
    if fd is None:
        return sys.stdout
    return open(int(fd), "w", buffering=1, encoding="utf-8", closefd=False)


class RoundProgress:
    """The ServerApp's output: lines, and one bar per round that follows the round's phases."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shows_bar = stream.isatty()
        self._bar: tqdm | None = None
        self._round = 0

    def line(self, text: str) -> None:
        """Write one line, clearing the bar first."""
        self.close()
        self.stream.write(text + "\n")
        self.stream.flush()

    def phase(self, server_round: int, name: str, sites: int | None = None) -> None:
        """Round ``server_round`` is now in phase ``name``; with ``sites``, that many sites are expected."""
        if not self.shows_bar:
            return
        if self._round != server_round:
            self.close()
        layout = "{desc} {n_fmt}/{total_fmt} sites [{elapsed}]" if sites else "{desc} [{elapsed}]"
        description = f"round {server_round}: {name}"
        if self._bar is None:
            self._bar = tqdm(total=sites, file=self.stream, leave=False, dynamic_ncols=True, bar_format=layout,
                             desc=description)
            self._round = server_round
            return
        self._bar.bar_format = layout
        self._bar.set_description_str(description, refresh=False)
        self._bar.reset(total=sites)

    def sites_done(self, count: int) -> None:
        """``count`` more of the expected sites have replied."""
        if self._bar is not None and count:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
