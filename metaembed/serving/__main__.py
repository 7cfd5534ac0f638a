"""``python -m metaembed.serving INDEX [--port N ...]``: the same as ``metaembed serve INDEX ...``."""

import sys

from metaembed.serving.server import main

sys.exit(main())
