"""``python -m apply_layer``: the same command line as ``apply-layer``."""

import sys

from apply_layer.commands import main

sys.exit(main())
