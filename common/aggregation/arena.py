"""Zeroed fp32 accumulators carved one after another out of large anonymous mappings, on huge pages where the
kernel offers them, and kept for the next aggregation.

An accumulator's first touch is a page fault per 4 KiB page, and its
scattered additions miss the TLB about as often. A mapping asked for
transparent huge pages (``MADV_HUGEPAGE``) and filled in one call
(``MADV_POPULATE_WRITE``, Linux 5.14) takes 2 MiB at a time: on MiniLM's
shapes that halves the time to supply an accumulator's pages (about 14 ms
against 28). Where either call is missing the pages come as the system gives
them, touched once on carving. Supplying fresh pages still costs the kernel
a zeroed page each, which in a busy server process measured 10 times the
14 ms, so a mapping no tensor is carved from any more stays in
:data:`RESERVE` and the next aggregation carves from it, zeroing what it
carves (a plain memset over pages already in place). The reserve keeps only
the mappings the last aggregation used, so between rounds the server holds
at most one aggregation's accumulators (about the model's size) of them.
"""

from __future__ import annotations

import math
import mmap
import sys

import numpy as np
import torch

CHUNK_BYTES = 64 << 20  # each mapping holds this much, or one tensor when larger
HUGE_PAGE = 2 << 20
ALIGN = 64  # bytes between the starts of tensors carved one after another: a cache line
# Python names the advice from 3.13; 23 is its value on Linux, where alone it exists
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else None)
PAGE = mmap.PAGESIZE


class Arena:
    """Hands out zeroed fp32 tensors, each a view of the current mapping, in the order asked for."""

    def __init__(self) -> None:
        self._mapping: _Mapping | None = None
        self._holding: np.ndarray | None = None  # a view that keeps the current mapping in use while carving
        self._used = 0

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = 4 * math.prod(shape)
        start = -(-self._used // ALIGN) * ALIGN
        if self._mapping is None or start + size > self._mapping.usable.size:
            if self._mapping is None:
                RESERVE.next_aggregation()
            self._mapping, start = RESERVE.take(size), 0
            self._holding = self._mapping.usable[:0]
        self._used = start + size
        self._mapping.supply(start, size)
        return torch.from_numpy(self._mapping.usable[start : start + size].view(np.float32).reshape(shape))


class Reserve:
    """Every mapping an arena took, each reused once nothing carved from it is alive."""

    def __init__(self) -> None:
        self._mappings: list[_Mapping] = []
        self._aggregation = 0

    def next_aggregation(self) -> None:
        """An arena carves its first tensor: idle mappings the arena before it did not use are released."""
        self._mappings = [mapping for mapping in self._mappings
                          if mapping.used_by >= self._aggregation or not mapping.idle()]
        self._aggregation += 1

    def take(self, size: int) -> _Mapping:
        """The smallest idle mapping of at least ``size`` bytes, else a new one."""
        fitting = [mapping for mapping in self._mappings if mapping.usable.size >= size and mapping.idle()]
        mapping = min(fitting, key=lambda m: m.usable.size, default=None)
        if mapping is None:
            mapping = _Mapping(max(CHUNK_BYTES, size))
            self._mappings.append(mapping)
        else:
            mapping.fresh = False
        mapping.used_by = self._aggregation
        return mapping

    def held_bytes(self) -> int:
        return sum(mapping.usable.size for mapping in self._mappings)


RESERVE = Reserve()


class _Mapping:
    """``size`` usable bytes of a fresh private anonymous mapping, starting at a huge-page boundary."""

    def __init__(self, size: int) -> None:
        flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
        self._pages = mmap.mmap(-1, size + HUGE_PAGE, **({"flags": flags} if flags else {}))
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self._pages.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        self._whole = np.frombuffer(self._pages, dtype=np.uint8)
        self._origin = -self._whole.ctypes.data % HUGE_PAGE
        self.usable = self._whole[self._origin : self._origin + size]
        self._idle_references = sys.getrefcount(self._whole)  # every view carved from it holds one more
        self.fresh = True  # no tensor was carved from it yet: its pages are zero
        self.used_by = 0  # the aggregation that took it last

    def idle(self) -> bool:
        """Whether no view of the mapping (no tensor carved from it, nor one of their views) is alive."""
        return sys.getrefcount(self._whole) == self._idle_references

    def supply(self, start: int, size: int) -> None:
        """Have the pages under ``usable[start : start + size]`` in place and zero now: a fresh mapping's in one
        call where the kernel can, a reused one's by zeroing them."""
        if size == 0:
            return
        if not self.fresh:
            self.usable[start : start + size] = 0
            return
        first = (self._origin + start) // PAGE * PAGE
        last = -(-(self._origin + start + size) // PAGE) * PAGE
        if MADV_POPULATE_WRITE is not None and hasattr(self._pages, "madvise"):
            try:
                self._pages.madvise(MADV_POPULATE_WRITE, first, last - first)
                return
            except (OSError, ValueError):
                pass
        self.usable[start : start + size : PAGE] = 0
