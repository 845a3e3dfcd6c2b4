"""``python -m migemu``: the same as the ``migemu`` command."""

import sys

from migemu.emulator.cli import main

sys.exit(main(["migemu", *sys.argv[1:]]))
