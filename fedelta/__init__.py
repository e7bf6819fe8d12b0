"""fedelta: federated delta distribution for multi-site fine-tuning over Flower.

The repository's top-level folders are this package's subpackages:
``fedelta.common`` (the Flower-free core), ``fedelta.client`` (the site),
``fedelta.server`` (the server and its console) and ``fedelta.simulations``
(simulation, experiments and benchmarks). :mod:`fedelta.cli` is the
``fedelta`` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedelta")
except PackageNotFoundError:
    __version__ = "0+unknown"
