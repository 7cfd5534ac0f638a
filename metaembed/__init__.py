"""metaembed: MetaEmbed multi-vector multimodal retrieval.

Learnable Meta Tokens appended to a vision-language backbone give every item a
small, ordered set of vectors (16 for a query, 64 for a candidate). Matryoshka
Multi-Vector Retrieval training makes every prefix useful, so one index serves
many budgets ``(r_q, r_c)`` chosen at query time and scored with MaxSim.

The public API is re-exported here and imported lazily, so that ``import
metaembed`` (and the CLI's start-up) does not pay for torch and transformers
until they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaembed.registry import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Budget": "metaembed.budget",
    "DEFAULT_LADDER": "metaembed.budget",
    "parse_ladder": "metaembed.budget",
    "MetaEmbedError": "metaembed.errors",
    "maxsim": "metaembed.scoring",
    "MetaEmbedConfig": "metaembed.model",
    "MetaEmbedModel": "metaembed.model",
    "MultiVectorIndex": "metaembed.index",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from metaembed.budget import DEFAULT_LADDER, Budget, parse_ladder
    from metaembed.errors import MetaEmbedError
    from metaembed.index import MultiVectorIndex
    from metaembed.model import MetaEmbedConfig, MetaEmbedModel
    from metaembed.scoring import maxsim


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS) + ["__version__"]
