"""``python -m metaembed.serving INDEX [--port N ...]``: the same as ``metaembed serve INDEX ...``."""

import sys

from metaembed.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
