"""Score-aware product quantisation ``apq2``: pq2's bytes, codes chosen for inner products.

MaxSim ranks by inner products, and what moves a candidate's score ``q . x`` most is the part
of the quantisation error ``r = x - x_hat`` *along* ``x``: the queries that matter for ``x`` are
the ones close to it. ``apq2`` keeps :mod:`.pq`'s layout (``D / 4`` runs of 4 values, one byte
each: 2 bits a value, 1/8 of float16; the same k-means codebooks ``(D / 4, 256, 4)``) and
changes two things (Guo et al. 2020, "Accelerating Large-Scale Inference with Anisotropic
Vector Quantization", the loss of ScaNN):

* **encoding** picks the codes that minimise the anisotropic loss
  ``|r|^2 + (eta - 1) (r . u)^2`` with ``u = x / |x|`` instead of ``|r|^2``, by coordinate
  descent over the runs started from the nearest centroids (each step is exact for its run:
  all 256 centroids are tried); the weight ``eta`` on the parallel error (:data:`ETA`) was
  chosen on the validation pages (``benchmarks/codecs.py --corpus validation``);
* **decoding** rescales the centroids' concatenation to unit length, the length every
  MetaEmbed vector has (vectors are L2-normalised by the model), so the codec stores unit
  vectors only: :meth:`AnisotropicProductQuantizer.encode` refuses a vector whose norm is not
  1 (within :data:`NORM_TOLERANCE`).

Nothing is stored per vector beyond the ``D / 4`` code bytes. The state (codebooks and
``eta``) lives in the index's checksummed codebook file like pq's. Search decodes chunk by
chunk (one table look-up and one normalisation, in the kernel's tasks, as pq's), then scores each
chunk with the exact MaxSim kernel.
Encoding costs about 3 x 256 multiply-adds a value (three descent passes) against pq2's one
nearest-centroid search; it runs in C (``metaembed/native/apq.c``, the vectors' chunks spread over
the compute threads) where the extension is built, else in torch (:meth:`AnisotropicProductQuantizer._encode_chunk`,
over ten times slower: 541 s against 40 s to train and code the 99k passages of
``benchmarks/results/codecs-scale-zen5-avx512.md``). What it keeps on real embeddings: ``benchmarks/results/codecs-*.md``.
Measured on vectors the codebooks never saw (the benchmark's cross-fit), the anisotropic weight
adds nothing over ``eta = 1`` (validation worst-budget overlap 0.855 at 4 against 0.857 at 1):
what apq2 gains over pq2 there comes from the unit-length decoding.
"""

from __future__ import annotations

import numpy as np
import torch

from metaembed import native
from metaembed.errors import InputError
from metaembed.index.codecs import CODECS
from metaembed.index.codecs.pq import CENTROIDS, ProductQuantizer
from metaembed.workers import pool_size, run_parallel

#: weight of the error along the vector against the error across it (1 would be plain pq2)
ETA = 4.0
#: coordinate-descent passes over the runs (the loss stops moving after two or three)
PASSES = 3
#: how far from 1 a vector's norm may be (fp16 round trips of unit vectors stay well inside)
NORM_TOLERANCE = 1e-2
#: vectors encoded at a time: bounds the (chunk, runs, 256) table of inner products (100 MiB)
_CHUNK = 1024


class AnisotropicProductQuantizer(ProductQuantizer):
    """Codes ``(..., D / 4)`` uint8 for unit vectors; codebooks ``(D / 4, 256, 4)`` fp32 and ``eta``."""

    def __init__(self, centroids: np.ndarray | None = None, eta: float = ETA) -> None:
        super().__init__(2, centroids)
        self.name = "apq2"
        self.eta = float(eta)

    def fit(self, sample: torch.Tensor) -> "AnisotropicProductQuantizer":
        """pq2's k-means codebooks from fp32 ``sample`` ``(n, D)`` of unit vectors (see :meth:`ProductQuantizer.fit`)."""
        self._check_unit(sample)
        return AnisotropicProductQuantizer(super().fit(sample).centroids, self.eta)

    def state(self) -> dict[str, np.ndarray]:
        if self.centroids is None:
            return {}
        return {"centroids": self.centroids, "eta": np.array([self.eta], dtype=np.float32)}

    def with_state(self, state: dict[str, np.ndarray]) -> "AnisotropicProductQuantizer":
        eta = state.get("eta")
        if eta is None or eta.shape != (1,) or not np.isfinite(eta).all() or float(eta[0]) < 1:
            raise ValueError(f"{self.name} state needs 'eta', one float >= 1, got {None if eta is None else eta!r}")
        codebooks = super().with_state({key: value for key, value in state.items() if key != "eta"})
        return AnisotropicProductQuantizer(codebooks.centroids, float(eta[0]))

    def _check_unit(self, vectors: torch.Tensor) -> None:
        norms = torch.linalg.vector_norm(vectors.reshape(-1, vectors.shape[-1]).to(torch.float32), dim=-1)
        if norms.numel() and float((norms - 1).abs().max()) > NORM_TOLERANCE:
            worst = float(norms[(norms - 1).abs().argmax()])
            raise InputError(
                f"dtype {self.name} stores unit vectors (L2-normalised, as MetaEmbed's are), got a norm of {worst:.4g}; "
                "normalise them or use pq2"
            )

    def encode(self, vectors: torch.Tensor) -> tuple[np.ndarray, None]:
        self._trained()
        dim = vectors.shape[-1]
        width = self.centroids.shape[0]
        if dim != width * self.run:
            raise InputError(f"dtype {self.name} was trained on dim {width * self.run}, got {dim}")
        self._check_unit(vectors)
        flat = vectors.to(torch.float32).reshape(-1, dim).contiguous()
        chunks = range(0, flat.shape[0], _CHUNK)
        if native.apq_available():  # the same descent in C, chunks spread over the compute threads
            codes = torch.empty(flat.shape[0], width, dtype=torch.uint8)
            centroids = torch.from_numpy(self.centroids)

            def encode_chunk(start: int) -> None:
                codes[start : start + _CHUNK] = native.apq_encode(flat[start : start + _CHUNK], centroids, self.eta, PASSES)

            run_parallel(encode_chunk, chunks, pool_size())
        else:
            codes = torch.cat([self._encode_chunk(flat[start : start + _CHUNK]) for start in chunks]) \
                if flat.shape[0] else torch.zeros(0, width)
        return codes.to(torch.uint8).numpy().reshape(*vectors.shape[:-1], width), None

    def _encode_chunk(self, vectors: torch.Tensor) -> torch.Tensor:
        """Codes ``(n, M)`` int64 minimising ``|r|^2 + (eta - 1) (r . u)^2`` run by run (the torch
        path, where the compiled encoder ``metaembed/native/apq.c`` is not built; the same steps)."""
        centroids = torch.from_numpy(self.centroids)  # (M, 256, run)
        n, width = vectors.shape[0], centroids.shape[0]
        runs = vectors.reshape(n, width, self.run).transpose(0, 1)  # (M, n, run)
        # With x unit, u = x and every term is a function of p = x_m . c and |c|^2:
        # |r_m|^2 = |x_m|^2 - 2p + |c|^2, and r . u = sum over runs of (|x_m|^2 - p).
        products = torch.bmm(runs, centroids.transpose(1, 2))  # (M, n, 256)
        lengths = (centroids**2).sum(-1)[:, None, :]  # (M, 1, 256)
        squares = (runs**2).sum(-1)  # (M, n)
        codes = (lengths - 2 * products).argmin(-1)  # nearest centroids: pq2's codes
        parallel = squares - products.gather(2, codes[:, :, None])[:, :, 0]  # (M, n): r_m . x_m
        along = parallel.sum(0)  # (n,): r . u
        weight = self.eta - 1
        for _ in range(PASSES):
            for m in range(width):
                rest = along - parallel[m]
                shifted = rest[:, None] + squares[m][:, None] - products[m]  # (n, 256): r . u with code c at run m
                loss = lengths[m] - 2 * products[m] + weight * shifted**2
                codes[m] = loss.argmin(-1)
                parallel[m] = squares[m] - products[m].gather(1, codes[m][:, None])[:, 0]
                along = rest + parallel[m]
        return codes.transpose(0, 1)

    def decode(self, codes: np.ndarray, scales: np.ndarray | None = None) -> torch.Tensor:
        """fp32 ``(..., D)``: the codes' centroids side by side, rescaled to unit length."""
        return torch.nn.functional.normalize(super().decode(codes, scales), dim=-1)


CODECS.register(AnisotropicProductQuantizer())

__all__ = ["AnisotropicProductQuantizer", "ETA", "PASSES", "NORM_TOLERANCE", "CENTROIDS"]
