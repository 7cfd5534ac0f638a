"""The collator: a list of training examples → model-ready batches for the three sides.

Items of any modality are handed to ``model.prepare`` (the model owns prompts, padding and image
processing), so one batch can mix text-only, image-only and interleaved items.

Output of :meth:`ContrastiveCollator.__call__`::

    {"query":    [chunk, ...],   # model.prepare(queries[k:k+chunk_size], "query")
     "positive": [chunk, ...],   # model.prepare(positives[...], "candidate")
     "negative": [chunk, ...],   # the B·N hard negatives, query-major (query u's k-th at u·N + k)
     "num_negatives": N}

Every side is a list of chunks: one chunk for the plain step, several of ``chunk_size`` items for
gradient caching, which encodes the chunks one at a time. ``N`` is ``num_negatives`` capped by the
fewest negatives any example of the batch has (every query must have the same number of logits;
batches come from one source, whose examples normally agree).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from torch import Tensor

from metaembed.errors import InputError
from metaembed.model.items import Item
from metaembed.training.examples import TrainingExample


class Preparer(Protocol):
    """What the collator needs from a model: ``MetaEmbedModel.prepare``."""

    def prepare(self, items: Sequence[Item], side: str, instruction: str | None = None) -> dict[str, Tensor]: ...


class ContrastiveCollator:
    """Batches :class:`TrainingExample` lists for the contrastive trainer.

    Args:
        model: anything with ``prepare(items, side)`` (a :class:`~metaembed.model.MetaEmbedModel`).
        num_negatives: hard negatives per query to keep (0 disables them).
        chunk_size: items per chunk; ``None`` keeps each side in one chunk.
    """

    def __init__(self, model: Preparer, num_negatives: int = 1, chunk_size: int | None = None) -> None:
        if num_negatives < 0:
            raise InputError(f"num_negatives must be >= 0, got {num_negatives}")
        if chunk_size is not None and chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.model = model
        self.num_negatives = num_negatives
        self.chunk_size = chunk_size

    def _chunks(self, items: list[Item], side: str) -> list[dict[str, Tensor]]:
        size = self.chunk_size or len(items)
        return [self.model.prepare(items[k : k + size], side) for k in range(0, len(items), size)]

    def __call__(self, examples: Sequence[TrainingExample]) -> dict[str, Any]:
        if not examples:
            raise InputError("cannot collate an empty batch of training examples")
        num_negatives = min([self.num_negatives] + [len(e.negatives) for e in examples])
        batch: dict[str, Any] = {
            "query": self._chunks([e.query for e in examples], "query"),
            "positive": self._chunks([e.positive for e in examples], "candidate"),
            "num_negatives": num_negatives,
        }
        if num_negatives:
            negatives = [n for e in examples for n in e.negatives[:num_negatives]]
            batch["negative"] = self._chunks(negatives, "candidate")
        return batch


__all__ = ["ContrastiveCollator", "Preparer"]
