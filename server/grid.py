"""Views of the Grid Flower gave the ServerApp: one that counts replies as they arrive (a round's
progress), and one that lists only the nodes a round may sample (sites the operator did not block).

Each forwards every call to the Grid it wraps. :class:`CountingGrid`'s
``send_and_receive`` runs that Grid's own method with the view in its place,
so Flower's waiting loop pulls replies through its :meth:`pull_messages`,
which counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class GridView(Grid):
    """``inner``, every call forwarded; subclasses change one method."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner

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
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)


class CountingGrid(GridView):
    """``inner`` with ``on_replies(n)`` called whenever ``n`` replies have been pulled."""

    def __init__(self, inner: Grid, on_replies: Callable[[int], None]) -> None:
        super().__init__(inner)
        self.on_replies = on_replies

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self.on_replies(len(replies))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return type(self.inner).send_and_receive(self, messages, timeout=timeout)  # type: ignore[arg-type]


class EligibleGrid(GridView):
    """``inner`` as sampling sees it: each listing of node ids first tells ``names`` what Flower knows of
    every connected node (node id -> the name its key was registered under, "" if none), then leaves
    out the nodes ``shut_out`` names."""

    def __init__(self, inner: Grid, names: Callable[[Mapping[str, str]], None],
                 shut_out: Callable[[str], bool]) -> None:
        super().__init__(inner)
        self.names = names
        self.shut_out = shut_out

    def get_node_ids(self) -> Iterable[int]:
        nodes = list(self.inner.get_nodes())
        self.names({str(node.node_id): node.name for node in nodes})
        return [node.node_id for node in nodes if not self.shut_out(str(node.node_id))]
