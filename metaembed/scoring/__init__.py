"""Scoring: budgeted MaxSim and its kernels, pure tensors (no model, no index, no storage format).

``maxsim(queries, candidates, budget)`` is the public function; the index scores its
stored blocks through :func:`score_sources`, which takes candidates position by position
in any float dtype or as int8 codes with fp32 group scales (what the storage codecs of
:mod:`metaembed.index.codecs` hand it). The fused compiled kernel lives in
:mod:`metaembed.native`; :mod:`metaembed.scoring.kernel` falls back to BLAS where it is
not built.
"""

from metaembed.scoring.kernel import (
    ArrayLike,
    CandidateSource,
    as_tensor,
    maxsim,
    maxsim_blocked,
    maxsim_flops,
    query_matrix,
    resolve_budget,
    score_dense,
    score_many,
    score_positions,
    score_sources,
)

__all__ = [
    "ArrayLike",
    "CandidateSource",
    "as_tensor",
    "maxsim",
    "maxsim_blocked",
    "maxsim_flops",
    "query_matrix",
    "resolve_budget",
    "score_dense",
    "score_many",
    "score_positions",
    "score_sources",
]
