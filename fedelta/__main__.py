"""``python -m fedelta``: the ``fedelta`` command."""

import sys

from fedelta.cli import main

sys.exit(main())
