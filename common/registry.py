"""A name-to-unit registry that refuses duplicates and explains unknown names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered unit with what a user needs to choose it."""

    name: str
    unit: T
    summary: str
    reference: str


class Registry(Generic[T]):
    """Units registered by name, e.g. pruners or fine-tuning methods."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, summary: str, reference: str) -> Callable[[T], T]:
        """Decorator registering ``unit`` under ``name``; a second use of a name is an error."""

        def add(unit: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, unit, summary, reference)
            return unit

        return add

    def get(self, name: str) -> T:
        return self.entry(name).unit

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
