"""Which site a node is: the name its key was registered under, else the name it first claimed, bound to its node id.

The transport knows who a node is; its messages only claim it. Under
Flower's Deployment Engine every SuperNode authenticates with a public key
that ``fedelta server`` registered with ``flwr supernode register --name
NAME``, and the ServerApp reads that name back for each node id
(``Grid.get_nodes()``: ``NodeInfo.name``); that name is the node's site,
whatever its replies say. A node Flower names nothing for (under the
Simulation Engine, whose ClientApp names its site after its partition) is
bound, at first contact, to the name it claims if that is a site name
(:func:`is_site_name`) and no other node holds it, and to ``node-<id>``
otherwise. Bindings last as long as the server process: the Simulation
Engine draws new node ids each time it starts.
"""

from __future__ import annotations

from fedelta.common.keys import SITE_NAME


def is_site_name(name: str) -> bool:
    """Whether ``name`` is a site name as ``fedelta keys`` accepts it (letters, digits, '.', '_', '-')."""
    return SITE_NAME.fullmatch(name) is not None


def node_name(node: str) -> str:
    """What a node with no site of its own is recorded as."""
    return f"node-{node}"


class Identities:
    """Node ids and the site bound to each, both ways."""

    def __init__(self) -> None:
        self._sites: dict[str, str] = {}
        self._nodes: dict[str, str] = {}

    def register(self, node: str, name: str) -> None:
        """Bind ``node`` to the name the transport knows it by, replacing what either was bound to."""
        if self._sites.get(node) == name:
            return
        self._unbind(node)
        holder = self._nodes.get(name)
        if holder is not None:
            self._unbind(holder)
        self._bind(node, name)

    def identify(self, node: str, claim: str) -> str:
        """The site ``node`` is: its binding, else (first contact) its claim when plain and free."""
        if node not in self._sites:
            free = is_site_name(claim) and claim not in self._nodes
            self._bind(node, claim if free else node_name(node))
        return self._sites[node]

    def site_of(self, node: str) -> str | None:
        """The site bound to ``node``, or ``None`` before its first contact."""
        return self._sites.get(node)

    def _bind(self, node: str, site: str) -> None:
        self._sites[node] = site
        self._nodes[site] = node

    def _unbind(self, node: str) -> None:
        site = self._sites.pop(node, None)
        if site is not None:
            self._nodes.pop(site, None)
