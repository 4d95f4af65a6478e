"""``python -m missionstream``: see :mod:`missionstream.cli`."""

import sys

from .cli import main

sys.exit(main())
