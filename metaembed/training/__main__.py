"""``python -m metaembed.training CONFIG.yaml`` — the form ``torchrun`` and ``accelerate launch`` need.

    torchrun --nproc_per_node 8 -m metaembed.training runs/mmr.yaml
"""

from __future__ import annotations

import sys

from metaembed.errors import MetaEmbedError


def main(argv: list[str] | None = None) -> int:
    """Train from the YAML file named by the single argument; print the final model folder."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    from metaembed.training.run import train

    try:
        path = train(argv[0])
    except MetaEmbedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
