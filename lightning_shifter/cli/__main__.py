"""``python -m lightning_shifter.cli``: the ``lightning-shifter`` command."""

import sys

from lightning_shifter.cli import main

sys.exit(main())
