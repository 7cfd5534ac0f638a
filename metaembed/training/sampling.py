"""The training mixture and a batch sampler that draws every batch from one source.

In-batch negatives are only informative when the other positives in the batch are plausible
confusers: a classification label competing with an image caption is trivially wrong. The official
code therefore interleaves sources in runs of one data set (VLM2Vec-v2 style); here every *global*
batch (the batch of all processes together, ``per_device_batch_size × world_size``) comes from one
source, and the data loader splits it across processes (accelerate's ``split_batches``), so the
gathered positives of a step also share a source.
"""

from __future__ import annotations

import bisect
import warnings
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset

from metaembed.errors import InputError
from metaembed.training.examples import TrainingExample, TrainingSource


class TrainingMixture(Dataset):
    """The concatenation of several :class:`TrainingSource`; index ``i`` is a global example index."""

    def __init__(self, sources: Sequence[TrainingSource]) -> None:
        if not sources:
            raise InputError("the training mixture has no source: give at least one data entry")
        names = [source.name for source in sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"training sources must have distinct names, got duplicates {duplicates}")
        self.sources = list(sources)
        self.offsets = [0]
        for source in self.sources:
            self.offsets.append(self.offsets[-1] + len(source))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> TrainingExample:
        source = bisect.bisect_right(self.offsets, index) - 1
        return self.sources[source][index - self.offsets[source]]

    @property
    def sizes(self) -> list[int]:
        """Number of (capped) examples of each source."""
        return [len(source) for source in self.sources]

    @property
    def weights(self) -> list[float]:
        """Sampling weight of each source."""
        return [source.weight for source in self.sources]


class SourceBatchSampler:
    """Yields global batches of example indices, each batch drawn from a single source.

    One epoch holds ``Σ_s ⌊n_s / batch_size⌋`` batches. Each batch picks its source with probability
    proportional to the source's weight (among sources that can fill a batch), then takes the next
    ``batch_size`` indices of that source's shuffled order; a source that runs out is reshuffled, so
    a heavily weighted small source is seen several times per epoch (the official
    ``all_exhausted`` interleaving does the same). The order depends only on ``seed`` and the
    epoch, so a resumed run sees the same batches.

    Args:
        mixture: the data set the indices point into.
        batch_size: the *global* batch size (all processes), a multiple of the process count.
        seed: base seed of the shuffles.
    """

    drop_last = True  # a short batch would change the number of in-batch negatives

    def __init__(self, mixture: TrainingMixture, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.offsets = mixture.offsets
        self.sizes = mixture.sizes
        self.weights = mixture.weights
        small = [s.name for s, n in zip(mixture.sources, self.sizes) if n < batch_size]
        if len(small) == len(self.sizes):
            raise InputError(
                f"no training source has a full batch of {batch_size} examples (sizes {self.sizes}); "
                "lower the batch size or add data"
            )
        if small:
            warnings.warn(f"sources {small} have fewer than {batch_size} examples and are not sampled", stacklevel=2)
        self.eligible = [i for i, n in enumerate(self.sizes) if n >= batch_size]

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffles (called by the trainer at the start of every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.sizes[i] // self.batch_size for i in self.eligible)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        probabilities = np.array([self.weights[i] for i in self.eligible], dtype=np.float64)
        probabilities /= probabilities.sum()
        orders = {i: rng.permutation(self.sizes[i]) for i in self.eligible}
        cursors = dict.fromkeys(self.eligible, 0)
        for _ in range(len(self)):
            source = self.eligible[int(rng.choice(len(self.eligible), p=probabilities))]
            if cursors[source] + self.batch_size > self.sizes[source]:
                orders[source] = rng.permutation(self.sizes[source])
                cursors[source] = 0
            start = cursors[source]
            cursors[source] += self.batch_size
            yield [self.offsets[source] + int(i) for i in orders[source][start : start + self.batch_size]]


__all__ = ["TrainingMixture", "SourceBatchSampler"]
