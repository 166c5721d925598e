"""``python -m bridge`` is ``oliai-bridge``."""

import sys

from bridge.cli import main

sys.exit(main())
