"""Reproducible synthetic multi-vector data for the scoring benchmark.

Candidates have ``R_c`` unit vectors drawn around a few shared topic centres
(so scores have structure, unlike pure noise); queries are noisy copies of some
candidates' vectors, so each query has a true source candidate. The data are
generated block by block from fixed seeds: any block can be regenerated without
holding the whole corpus in memory (N = 20,000 x 64 x 2048 fp32 is 10.5 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

GENERATION_BLOCK = 1024
_TOPICS = 256
_NOISE = 0.9
_QUERY_NOISE = 0.6


@dataclass(frozen=True)
class SyntheticCorpus:
    """``num_candidates`` candidates of ``num_vectors`` vectors of dimension ``dim``, seeded."""

    num_candidates: int
    dim: int
    num_vectors: int = 64
    seed: int = 0

    def _topics(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        topics = torch.randn(_TOPICS, self.dim, generator=generator)
        return topics / topics.norm(dim=-1, keepdim=True)

    def block(self, index: int) -> torch.Tensor:
        """fp32 ``(n, R_c, D)`` unit vectors of candidates ``index*GENERATION_BLOCK ...``."""
        start = index * GENERATION_BLOCK
        n = min(GENERATION_BLOCK, self.num_candidates - start)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        which = torch.randint(0, _TOPICS, (n, self.num_vectors), generator=generator)
        noise = torch.randn(n, self.num_vectors, self.dim, generator=generator) * (_NOISE / self.dim**0.5)
        values = self._topics()[which] + noise
        return values / values.norm(dim=-1, keepdim=True)

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first candidate, block)`` for the whole corpus, in order."""
        for index in range(-(-self.num_candidates // GENERATION_BLOCK)):
            yield index * GENERATION_BLOCK, self.block(index)

    def queries(self, num_queries: int, num_vectors: int = 16) -> tuple[torch.Tensor, list[int]]:
        """fp32 ``(Q, R_q, D)`` queries, each a noisy copy of ``R_q`` vectors of one candidate, and those candidates."""
        generator = torch.Generator().manual_seed(self.seed + 7)
        first = self.block(0)
        sources = torch.randint(0, first.shape[0], (num_queries,), generator=generator).tolist()
        picked = torch.stack([first[s, torch.randperm(self.num_vectors, generator=generator)[:num_vectors]] for s in sources])
        noisy = picked + torch.randn(picked.shape, generator=generator) * (_QUERY_NOISE / self.dim**0.5)
        return noisy / noisy.norm(dim=-1, keepdim=True), sources


__all__ = ["SyntheticCorpus", "GENERATION_BLOCK"]
