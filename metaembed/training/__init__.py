"""Training: MMR losses, data loading, and the trainer that fits Meta Tokens + LoRA.

>>> from metaembed.training import TrainingConfig, train          # doctest: +SKIP
>>> train(TrainingConfig.from_yaml("mmr.yaml"))                   # doctest: +SKIP
PosixPath('runs/mmr/model')

Multi-process: ``torchrun --nproc_per_node 8 -m metaembed.training mmr.yaml``.

Names are imported lazily so that ``metaembed.training.losses`` (pure tensors) does not pull in
``transformers``.
"""

from __future__ import annotations

from metaembed.registry import lazy_exports

_EXPORTS = {
    "InfoNCELoss": "metaembed.training.losses",
    "MMRLoss": "metaembed.training.losses",
    "MMRGroup": "metaembed.training.losses",
    "DEFAULT_GROUPS": "metaembed.training.losses",
    "ContrastiveOutput": "metaembed.training.losses",
    "TrainingExample": "metaembed.training.examples",
    "TrainingSource": "metaembed.training.examples",
    "DataSpec": "metaembed.training.public_sets",
    "SubsetSpec": "metaembed.training.public_sets",
    "MOCA_MIXTURE": "metaembed.training.public_sets",
    "load_pairs": "metaembed.training.examples",
    "load_mmeb_train": "metaembed.training.public_sets",
    "load_colpali_train": "metaembed.training.public_sets",
    "TrainingMixture": "metaembed.training.sampling",
    "SourceBatchSampler": "metaembed.training.sampling",
    "ContrastiveCollator": "metaembed.training.collator",
    "TrainingConfig": "metaembed.training.config",
    "LoraSpec": "metaembed.training.config",
    "gather_positives": "metaembed.training.distributed",
    "MetaEmbedTrainer": "metaembed.training.trainer",
    "ContrastiveModule": "metaembed.training.trainer",
    "train": "metaembed.training.run",
    "build_trainer": "metaembed.training.run",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
