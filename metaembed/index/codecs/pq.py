"""Product quantisation: ``pq4``, ``pq2`` and ``pq1``, one byte per 2, 4 or 8 values.

A vector of dimension ``D`` is cut into ``M = D * bits / 8`` runs of ``8 / bits`` consecutive
values; each run is stored as the number (one byte) of the nearest of 256 centroids learnt for
that run by k-means (FAISS's :class:`faiss.ProductQuantizer`). ``pq2`` thus costs 2 bits a
value, 1/8 of float16; ``pq4`` 1/4 and ``pq1`` 1/16. The codebooks, ``(M, 256, 8 / bits)``
fp32 (384 KiB at D = 384), are learnt once per index from the vectors of its first add and kept
with the index (:mod:`metaembed.index.codebook`). A search decodes the codes to fp32 (a table
look-up) chunk by chunk, in the kernel's worker tasks, and scores each chunk with the same exact
MaxSim kernel as the float codecs (:attr:`metaembed.scoring.CandidateSource.decode`): its memory
stays a few MiB a worker whatever the index size.

What each costs in search quality on real embeddings: ``benchmarks/results/codecs-*.md``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metaembed.errors import InputError
from metaembed.index.codecs import CODECS, Codec, tensor_view

#: centroids per run of values: one byte per code
CENTROIDS = 256
#: k-means sees at most this many vectors: 64 per centroid, above FAISS's 39 for a stable
#: clustering, and a quarter of its default cap (256), so training stays a few CPU-seconds
TRAINING_VECTORS = 64 * CENTROIDS
_SEED = 1234


class ProductQuantizer(Codec):
    """Codes ``(..., M)`` uint8, ``M = D * bits / 8``; trained codebooks ``(M, 256, 8 / bits)`` fp32."""

    file_dtype = np.dtype(np.uint8)
    trained = True
    training_vectors = TRAINING_VECTORS

    def __init__(self, bits: int, centroids: np.ndarray | None = None) -> None:
        if bits not in (1, 2, 4):
            raise InputError(f"product quantisation stores 1, 2 or 4 bits a value, got {bits!r}")
        self.bits = bits
        self.name = f"pq{bits}"
        self.run = 8 // bits  # values per code
        self.centroids = centroids
        self._table = None if centroids is None else torch.from_numpy(centroids).reshape(-1, self.run)
        self._faiss: Any = None
        self._faiss_lock = threading.Lock()

    # ----------------------------------------------------------------- shape
    def check_dim(self, dim: int) -> None:
        if dim % self.run:
            raise InputError(
                f"dtype {self.name} codes runs of {self.run} values: dim must be a multiple of {self.run}, got {dim}"
            )

    def code_width(self, dim: int) -> int:
        return int(dim) // self.run

    # ----------------------------------------------------------------- training
    @property
    def fitted(self) -> bool:
        return self.centroids is not None

    def fit(self, sample: torch.Tensor) -> "ProductQuantizer":
        """Learn the codebooks from fp32 ``sample`` ``(..., D)``, at least 256 vectors (a seeded subsample of 16,384 if more)."""
        sample = sample.reshape(-1, sample.shape[-1]).to(torch.float32)
        self.check_dim(sample.shape[-1])
        if sample.shape[0] < CENTROIDS:
            raise InputError(
                f"dtype {self.name} learns its codebooks from the first vectors added: it needs at least {CENTROIDS} "
                f"vectors, got {sample.shape[0]}; add more items in the first batch"
            )
        return ProductQuantizer(self.bits, train_codebooks(sample, self.run))

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.centroids is None else {"centroids": self.centroids}

    def with_state(self, state: dict[str, np.ndarray]) -> "ProductQuantizer":
        centroids = state.get("centroids")
        if (
            set(state) != {"centroids"}
            or centroids is None
            or centroids.dtype != np.float32
            or centroids.ndim != 3
            or centroids.shape[1:] != (CENTROIDS, self.run)
            or not np.isfinite(centroids).all()
        ):
            shapes = {key: (value.dtype.name, value.shape) for key, value in state.items()}
            raise ValueError(f"{self.name} codebooks must be float32 (M, {CENTROIDS}, {self.run}), got {shapes}")
        return ProductQuantizer(self.bits, np.ascontiguousarray(centroids))

    def _trained(self) -> None:
        if self.centroids is None:
            raise InputError(f"dtype {self.name} has no codebooks yet: fit() it on a sample of vectors first")

    # ----------------------------------------------------------------- codes
    def _quantizer(self) -> Any:
        """The FAISS quantizer holding these codebooks (made once: encoding is FAISS's compute_codes)."""
        with self._faiss_lock:
            if self._faiss is None:
                self._faiss = faiss_quantizer(self.centroids)
            return self._faiss

    def encode(self, vectors: torch.Tensor) -> tuple[np.ndarray, None]:
        self._trained()
        dim = vectors.shape[-1]
        if dim != self.centroids.shape[0] * self.run:
            raise InputError(f"dtype {self.name} was trained on dim {self.centroids.shape[0] * self.run}, got {dim}")
        flat = np.ascontiguousarray(vectors.to(torch.float32).reshape(-1, dim).numpy())
        codes = self._quantizer().compute_codes(flat)
        return codes.reshape(*vectors.shape[:-1], self.code_width(dim)), None

    def decode(self, codes: np.ndarray, scales: np.ndarray | None = None) -> torch.Tensor:
        """fp32 ``(..., M * run)``: each code replaced by its centroid (one table look-up per code)."""
        self._trained()
        return lookup(codes, self._table)


def train_codebooks(sample: torch.Tensor, run: int) -> np.ndarray:
    """k-means codebooks ``(D / run, 256, run)`` fp32 for fp32 ``sample`` ``(n, D)``, ``n >= 256``.

    Each run of ``run`` consecutive values gets 256 centroids (FAISS's :class:`faiss.ProductQuantizer`,
    seeded); a sample above :data:`TRAINING_VECTORS` is subsampled (seeded) first.
    """
    import faiss

    if sample.shape[0] > TRAINING_VECTORS:
        chosen = torch.randperm(sample.shape[0], generator=torch.Generator().manual_seed(_SEED))[:TRAINING_VECTORS]
        sample = sample[chosen.sort().values]
    dim = sample.shape[-1]
    quantizer = faiss.ProductQuantizer(dim, dim // run, 8)
    quantizer.cp.seed = _SEED
    quantizer.cp.min_points_per_centroid = 1  # a small first add trains on what it has, without a warning
    quantizer.cp.max_points_per_centroid = TRAINING_VECTORS // CENTROIDS
    quantizer.train(np.ascontiguousarray(sample.to(torch.float32).numpy()))
    return faiss.vector_to_array(quantizer.centroids).reshape(dim // run, CENTROIDS, run).astype(np.float32)


def faiss_quantizer(centroids: np.ndarray) -> Any:
    """A FAISS quantizer holding ``centroids`` ``(M, 256, run)``: ``compute_codes`` of fp32 ``(n, M * run)`` is the nearest code per run."""
    import faiss

    width, _, run = centroids.shape
    quantizer = faiss.ProductQuantizer(width * run, width, 8)
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids).ravel(), quantizer.centroids)
    return quantizer


def lookup(codes: np.ndarray, table: torch.Tensor) -> torch.Tensor:
    """fp32 ``(..., M * run)`` for uint8 ``codes`` ``(..., M)``: code ``m`` replaced by row ``256 m + code`` of ``table`` ``(256 M, run)``."""
    width = codes.shape[-1]
    offsets = torch.arange(width, dtype=torch.int64) * CENTROIDS  # run m's centroids start at row m * 256
    rows = tensor_view(codes).to(torch.int64) + offsets
    return F.embedding(rows, table).flatten(-2)


for _bits in (4, 2, 1):
    CODECS.register(ProductQuantizer(_bits))

__all__ = ["ProductQuantizer", "CENTROIDS", "TRAINING_VECTORS", "train_codebooks", "faiss_quantizer", "lookup"]
