"""A Flower Grid that reports each reply as it arrives, so a round's progress can count the sites done.

It forwards every call to the Grid Flower gave the ServerApp. Its
``send_and_receive`` runs that Grid's own method with this object in its
place, so Flower's waiting loop pulls replies through :meth:`pull_messages`,
which counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class CountingGrid(Grid):
    """``inner`` with ``on_replies(n)`` called whenever ``n`` replies have been pulled."""

    def __init__(self, inner: Grid, on_replies: Callable[[int], None]) -> None:
        self.inner = inner
        self.on_replies = on_replies

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's Run
        self.inner.set_run(run)

    @property
    def run(self):  # noqa: ANN201 - Flower's Run
        return self.inner.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):  # noqa: ANN201 - Flower's NodeInfo records
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self.on_replies(len(replies))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return type(self.inner).send_and_receive(self, messages, timeout=timeout)  # type: ignore[arg-type]
