"""``python -m stedge_runtime``: the runtime's command line (stedge_runtime.cli), as ``stedge-runtime``."""

import sys

from .cli import main

sys.exit(main())
