"""Predictive product quantisation ``ppq2`` / ``ppq4``: pq's bytes per item, spent where budgets need them.

Per-vector quantisers (:mod:`.pq`, :mod:`.anisotropic`) code each of an item's ``R`` vectors on
its own, at the same precision. Two facts about MetaEmbed candidates say that wastes bytes:

* the vectors of one item are strongly correlated. On the 100k passages of
  ``benchmarks/results/codecs-scale-*`` (metaembed-minilm, R = 16) the Meta Token vectors fall
  into two tight groups: on 20,000 of them, 11 of the 15 vectors after the first have cosine
  >= 0.98 on average with an earlier vector of the same item;
* vector 0 is scored at every budget and alone at ``r_c = 1``; the last ones only at the largest.

``ppqB`` keeps pq's ``B`` bits a value on average (an item costs ``R * D * B / 8`` bytes, so
``ppq2`` is 1/8 of float16 like ``pq2``) and spends them so:

1. **vector 0** gets up to four times the average (at most one byte a value): a product quantiser
   with runs of ``8 / (4 B)`` values, after the mean of the position is removed;
2. **vector j > 0** is predicted as a fixed linear mix of the item's *decoded* vectors ``0 .. j-1``
   (``R x R`` lower-triangular weights, least squares on the training items, fitted in closed
   loop on what decoding yields, so encoder and decoder predict alike), and only the residual is
   coded: divided by the position's residual scale, by a product quantiser shared by every position
   of the same run length;
3. **bytes per position** follow the residual scales ``s_j``: starting from the shortest codes,
   the position whose next longer code cuts the modelled distortion ``s_j^2 4^(-bits)`` most per
   byte is upgraded while the item's budget allows (reverse water-filling); well-predicted positions
   get a few bytes, new information many;
4. **layout**: an item's codes are one byte stream cut into ``R`` slabs of ``D * B / 8`` bytes (the
   index's position-major ``(R, rows, W)`` file, unchanged), vector 0 first, so the first ``r_c``
   vectors are in the first :meth:`PredictiveProductQuantizer.slots` slabs: a budget prefix still
   reads a prefix of the file, and :meth:`~metaembed.index.codecs.Codec.bytes_per_item` counts the
   slabs it reads (more than ``r_c`` slabs for small ``r_c``, since vector 0 is the largest code).

Decoded vectors are rescaled to unit length when the training vectors were unit vectors (MetaEmbed's
are; then :meth:`~PredictiveProductQuantizer.encode` refuses others), as ``apq2`` does. The state
(codebooks, predictor, scales, widths) lives in the index's checksummed codebook file.

The first add must hold at least 256 items: the codes of vector 0 learn 256 centroids per run.
What it keeps on real embeddings, per budget: ``benchmarks/results/codecs-scale-*.md``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from metaembed.errors import InputError
from metaembed.index.codecs import CODECS, Codec
from metaembed.index.codecs.pq import CENTROIDS, faiss_quantizer, lookup, train_codebooks

#: run lengths (values per one-byte code) a position may get; only those dividing ``D`` are used
RUNS = (1, 2, 3, 4, 6, 8, 12, 16)
#: vector 0's code may cost this many times the average per vector (capped at one byte a value)
FIRST_SHARE = 4
#: items the codebooks and the predictor learn from at most (a seeded subsample of a larger first add)
FIT_ITEMS = 8192
#: ridge on the predictor's normal equations (keeps it defined when two positions coincide)
_RIDGE = 1e-6
#: norm tolerance for the unit-vector check (fp16 round trips of unit vectors stay well inside)
NORM_TOLERANCE = 1e-2
_SEED = 1234


def allocate(scales: np.ndarray, dim: int, budget: int, first: int) -> list[int]:
    """Bytes per position: ``first`` for vector 0, then water-filling of ``budget - first`` over ``scales[1:]``.

    Position ``j > 0`` starts at the shortest code (``dim / max run`` bytes); while bytes are
    left, the upgrade to the next longer code with the largest cut in ``s_j^2 4^(-bits)`` per
    extra byte is taken. Returns ``R`` byte counts, each ``dim / run`` for a run of :data:`RUNS`,
    summing to at most ``budget``.
    """
    options = sorted(dim // run for run in RUNS if dim % run == 0)  # bytes per vector, ascending
    widths = [first] + [options[0]] * (len(scales) - 1)
    left = budget - sum(widths)
    if left < 0:
        raise InputError(f"{len(scales)} vectors of dim {dim} need at least {sum(widths)} bytes an item, the budget is {budget}")

    def distortion(j: int, width: int) -> float:
        return float(scales[j]) ** 2 * 4.0 ** (-8.0 * width / dim)

    while True:
        best, gain = None, 0.0
        for j in range(1, len(scales)):
            longer = [w for w in options if w > widths[j]]
            if not longer or longer[0] - widths[j] > left:
                continue
            step = (distortion(j, widths[j]) - distortion(j, longer[0])) / (longer[0] - widths[j])
            if step > gain:
                best, gain = j, step
        if best is None:
            return widths
        upgraded = min(w for w in options if w > widths[best])
        left -= upgraded - widths[best]
        widths[best] = upgraded


class PredictiveProductQuantizer(Codec):
    """Codes: one uint8 stream of ``R * W`` bytes an item (``W = D * bits / 8``), cut into ``R`` slabs.

    State: ``mean`` ``(D,)`` of vector 0, ``weights`` ``(R, R)`` (the predictor, lower-triangular),
    ``scales`` ``(R,)`` (residual scale per position), ``widths`` ``(R,)`` (code bytes per position),
    ``unit`` (whether decoded vectors are rescaled to unit length), ``first`` (vector 0's codebooks)
    and ``run<k>`` (the residual codebooks of run length ``k``, each ``(D / k, 256, k)``).
    """

    file_dtype = np.dtype(np.uint8)
    trained = True
    training_vectors = 65536

    def __init__(self, bits: int, state: dict[str, np.ndarray] | None = None) -> None:
        if bits not in (2, 4):
            raise InputError(f"predictive product quantisation stores 2 or 4 bits a value on average, got {bits!r}")
        self.bits = bits
        self.name = f"ppq{bits}"
        self._state = state
        self._quantizers: dict[str, Any] = {}
        self._lock = threading.Lock()
        if state is not None:
            self.mean = torch.from_numpy(state["mean"])
            self.weights = torch.from_numpy(state["weights"])
            self.scales = torch.from_numpy(state["scales"])
            self.widths = [int(w) for w in state["widths"]]
            self.unit = bool(state["unit"][0])
            self.offsets = np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)
            self._tables = {key: torch.from_numpy(value).reshape(-1, value.shape[-1])
                            for key, value in state.items() if key == "first" or key.startswith("run")}

    # ----------------------------------------------------------------- shape
    def check_dim(self, dim: int) -> None:
        if dim % 8:
            raise InputError(f"dtype {self.name} needs a dim that is a multiple of 8, got {dim}")

    def code_width(self, dim: int) -> int:
        return int(dim) * self.bits // 8

    @property
    def num_vectors(self) -> int:
        self._trained()
        return len(self.widths)

    def slots(self, r_c: int) -> int:
        """Slabs holding the first ``r_c`` vectors: ``ceil(sum(widths[:r_c]) / W)``, all ``R`` for the whole item."""
        if self._state is None or r_c <= 0:
            return int(r_c)
        count = self.num_vectors
        if r_c >= count:
            return count
        width = self._slab_width()
        return int(-(-int(self.offsets[r_c]) // width))

    def _slab_width(self) -> int:
        return self.code_width(self.mean.shape[0])

    # ----------------------------------------------------------------- training
    @property
    def fitted(self) -> bool:
        return self._state is not None

    def fit(self, sample: torch.Tensor) -> "PredictiveProductQuantizer":
        """Learn the codebooks, predictor and widths from fp32 items ``(n, R, D)``, ``n >= 256`` (8,192 drawn if more)."""
        if sample.dim() != 3:
            raise InputError(f"dtype {self.name} learns from whole items (n, R, D): got a sample of shape {tuple(sample.shape)}")
        items, count, dim = sample.shape
        self.check_dim(dim)
        if items < CENTROIDS:
            raise InputError(
                f"dtype {self.name} learns its codebooks from the first items added: it needs at least {CENTROIDS} "
                f"items, got {items}; add more items in the first batch"
            )
        if items > FIT_ITEMS:
            chosen = torch.randperm(items, generator=torch.Generator().manual_seed(_SEED))[:FIT_ITEMS]
            sample = sample[chosen.sort().values]
        x = sample.to(torch.float32).transpose(0, 1).contiguous()  # (R, n, D)
        norms = torch.linalg.vector_norm(x, dim=-1)
        unit = bool(((norms - 1).abs() <= NORM_TOLERANCE).all())
        slab = self.code_width(dim)
        shortest = min(dim // run for run in RUNS if dim % run == 0)
        cap = min(dim, FIRST_SHARE * slab, count * slab - (count - 1) * shortest)
        first_run = min(run for run in RUNS if dim % run == 0 and dim // run <= cap)
        mean = x[0].mean(0)
        first = train_codebooks(x[0] - mean, first_run)
        # Open-loop residual scales (vector 0 as decoded, later ones true) choose the widths.
        state: dict[str, np.ndarray] = {"mean": mean.numpy(), "first": first, "unit": np.array([unit])}
        decoded0 = self._finish(lookup(nearest_search(first)(x[0] - mean), torch.from_numpy(first).reshape(-1, first_run)) + mean, unit)
        known = torch.cat([decoded0[None], x[1:]])
        weights = torch.zeros(count, count)
        residuals: list[torch.Tensor] = []
        scales = torch.ones(count)
        for j in range(1, count):
            weights[j, :j] = _least_squares(known[:j], x[j])
            residual = x[j] - torch.einsum("k,knd->nd", weights[j, :j], known[:j])
            scales[j] = residual.pow(2).sum(-1).mean().sqrt().clamp_min(1e-6)
            residuals.append(residual / scales[j])
        widths = allocate(scales.numpy(), dim, count * slab, dim // first_run)
        for run in sorted({dim // w for w in widths[1:]}):
            chosen = torch.cat([residuals[j - 1] for j in range(1, count) if dim // widths[j] == run])
            state[f"run{run}"] = train_codebooks(chosen, run)
        # Closed loop: refit each position's weights and scale on the vectors decoding gives. codec.weights and
        # codec.scales share memory with its state arrays, so the refit values are what state() saves.
        state.update(widths=np.array(widths, dtype=np.int64), weights=weights.numpy().copy(), scales=scales.numpy().copy())
        codec = PredictiveProductQuantizer(self.bits, state)
        decoded = torch.empty_like(x)
        decoded[0] = decoded0
        for j in range(1, count):
            codec.weights[j, :j] = _least_squares(decoded[:j], x[j])
            prediction = codec._prediction(j, decoded)
            codec.scales[j] = (x[j] - prediction).pow(2).sum(-1).mean().sqrt().clamp_min(1e-6)
            decoded[j] = codec._decode_one(j, codec._code_one(j, x[j], prediction), prediction)
        return codec

    def state(self) -> dict[str, np.ndarray]:
        return {} if self._state is None else dict(self._state)

    def with_state(self, state: dict[str, np.ndarray]) -> "PredictiveProductQuantizer":
        try:
            widths, mean, weights, scales = state["widths"], state["mean"], state["weights"], state["scales"]
            count, dim = int(widths.shape[0]), int(mean.shape[0])
            tables = {key: value for key, value in state.items() if key == "first" or key.startswith("run")}
            runs_needed = {f"run{dim // int(w)}" for w in widths[1:]} | {"first"}
            ok = (
                widths.ndim == 1 and count >= 1 and mean.dtype == np.float32 and mean.ndim == 1
                and weights.dtype == np.float32 and weights.shape == (count, count)
                and scales.dtype == np.float32 and scales.shape == (count,)
                and state["unit"].shape == (1,) and set(tables) == runs_needed
                and all(int(w) > 0 and dim % int(w) == 0 for w in widths)
                and int(widths.sum()) <= count * self.code_width(dim)
                and all(t.dtype == np.float32 and t.ndim == 3 and t.shape[1] == CENTROIDS and t.shape[0] * t.shape[2] == dim
                        for t in tables.values())
                and tables["first"].shape[0] == int(widths[0])
                and all(np.isfinite(value).all() for value in (mean, weights, scales, *tables.values()))
            )
        except (KeyError, AttributeError, TypeError, IndexError):
            ok = False
        if not ok:
            shapes = {key: (value.dtype.name, value.shape) for key, value in state.items()}
            raise ValueError(f"{self.name} state does not fit the codec: {shapes}")
        return PredictiveProductQuantizer(self.bits, {key: np.ascontiguousarray(value) for key, value in state.items()})

    def _trained(self) -> None:
        if self._state is None:
            raise InputError(f"dtype {self.name} has no codebooks yet: fit() it on a sample of items first")

    # ----------------------------------------------------------------- codes
    def _table(self, j: int) -> tuple[str, torch.Tensor]:
        key = "first" if j == 0 else f"run{self.mean.shape[0] // self.widths[j]}"
        return key, self._tables[key]

    def _nearest(self, key: str, target: torch.Tensor) -> np.ndarray:
        """uint8 ``(n, M)``: per run of ``target`` ``(n, M * run)``, the nearest centroid of codebooks ``key``."""
        with self._lock:
            if key not in self._quantizers:
                self._quantizers[key] = nearest_search(self._state[key])
        return self._quantizers[key](target)

    def _finish(self, vectors: torch.Tensor, unit: bool | None = None) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) if (self.unit if unit is None else unit) else vectors

    def _code_one(self, j: int, vectors: torch.Tensor, prediction: torch.Tensor) -> np.ndarray:
        """uint8 ``(n, widths[j])``: position ``j``'s code of fp32 ``vectors`` ``(n, D)`` given its ``prediction``."""
        key, _ = self._table(j)
        target = vectors - self.mean if j == 0 else (vectors - prediction) / self.scales[j]
        return self._nearest(key, target)

    def _decode_one(self, j: int, codes: np.ndarray, prediction: torch.Tensor) -> torch.Tensor:
        _, table = self._table(j)
        values = lookup(codes, table)
        return self._finish(values + self.mean if j == 0 else prediction + self.scales[j] * values)

    def _prediction(self, j: int, decoded: torch.Tensor) -> torch.Tensor:
        """sum_k weights[j, k] decoded[k] over k < j, term by term in order: every item gets the same bits
        whatever else is decoded with it (a BLAS product picks its kernel by shape: one item alone came
        out 1e-7 off the same item in a batch, so a vector read by id differed from its exported copy)."""
        if j == 0:
            return torch.zeros(())
        weights = self.weights[j, :j].tolist()
        total = decoded[0] * weights[0]
        term = torch.empty_like(total)
        for k in range(1, j):
            total.add_(torch.mul(decoded[k], weights[k], out=term))
        return total

    def encode(self, vectors: torch.Tensor) -> tuple[np.ndarray, None]:
        """Position-major fp32 items ``(R, n, D)`` as codes ``(R, n, W)``: each item's stream cut into ``R`` slabs."""
        self._trained()
        count, dim = self.num_vectors, self.mean.shape[0]
        if vectors.dim() != 3 or vectors.shape[0] != count or vectors.shape[-1] != dim:
            raise InputError(f"dtype {self.name} was trained on items of {count} vectors of dim {dim}, got {tuple(vectors.shape)}")
        x = vectors.to(torch.float32)
        if self.unit:
            norms = torch.linalg.vector_norm(x, dim=-1)
            if norms.numel() and float((norms - 1).abs().max()) > NORM_TOLERANCE:
                worst = float(norms.flatten()[(norms - 1).abs().flatten().argmax()])
                raise InputError(f"dtype {self.name} was trained on unit vectors (L2-normalised), got a norm of {worst:.4g}")
        items = x.shape[1]
        stream = np.zeros((items, count * self.code_width(dim)), dtype=np.uint8)
        decoded = torch.empty(x.shape)  # contiguous: x may be a transposed view
        for j in range(count):
            prediction = self._prediction(j, decoded)
            codes = self._code_one(j, x[j], prediction)
            stream[:, self.offsets[j] : self.offsets[j + 1]] = codes
            decoded[j] = self._decode_one(j, codes, prediction)
        return stream.reshape(items, count, -1).transpose(1, 0, 2).copy(), None

    def decode(self, codes: np.ndarray, scales: np.ndarray | None = None) -> torch.Tensor:
        """fp32 ``(R, ..., D)`` for whole items' codes ``(R, ..., W)``."""
        return self.decode_prefix(codes, scales, self.num_vectors)

    def decode_prefix(self, codes: np.ndarray, scales: np.ndarray | None, r_c: int) -> torch.Tensor:
        """fp32 ``(r_c, ..., D)``: the first ``r_c`` vectors of position-major codes ``(slots(r_c), ..., W)``."""
        self._trained()
        slots = codes.shape[0]
        if slots < self.slots(r_c):
            raise ValueError(f"{self.name}: {r_c} vectors need {self.slots(r_c)} slabs of codes, got {slots}")
        stream = np.moveaxis(np.asarray(codes), 0, -2)  # (..., slots, W)
        stream = stream.reshape(*stream.shape[:-2], -1)
        decoded = torch.empty(r_c, *stream.shape[:-1], self.mean.shape[0])
        for j in range(r_c):
            part = np.ascontiguousarray(stream[..., self.offsets[j] : self.offsets[j + 1]])
            decoded[j] = self._decode_one(j, part, self._prediction(j, decoded))
        return decoded


def nearest_search(centroids: np.ndarray) -> Callable[[torch.Tensor], np.ndarray]:
    """The nearest-centroid search for codebooks ``(M, 256, run)``: fp32 ``(n, M * run)`` to uint8 ``(n, M)``.

    FAISS's ``compute_codes``, whose fast kernels want runs of 2, 4, 8 or 16 values: runs of 3, 6
    or 12 are padded with a zero coordinate (vectors and centroids alike: the same distances) up to
    the next of those. Runs of one value (vector 0's byte a value, where FAISS takes ~40 us a
    vector) use bisection among the sorted centroids' midpoints.
    """
    width, _, run = centroids.shape
    if run == 1:
        ordered, order = torch.from_numpy(centroids[:, :, 0]).sort(dim=1)
        midpoints = (ordered[:, 1:] + ordered[:, :-1]) / 2

        def bisect(target: torch.Tensor) -> np.ndarray:
            rank = torch.searchsorted(midpoints, target.T.contiguous())  # (M, n): among the sorted centroids
            return order.gather(1, rank).T.to(torch.uint8).numpy()

        return bisect
    padded = 1 << (run - 1).bit_length()
    quantizer = faiss_quantizer(np.pad(centroids, ((0, 0), (0, 0), (0, padded - run))))

    def nearest(target: torch.Tensor) -> np.ndarray:
        runs = target.to(torch.float32).reshape(-1, width, run)
        if padded != run:
            runs = F.pad(runs, (0, padded - run))
        return quantizer.compute_codes(np.ascontiguousarray(runs.reshape(runs.shape[0], -1).numpy()))

    return nearest


def _least_squares(known: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Weights ``(k,)`` minimising ``|target - sum_i w_i known_i|^2`` over ``known`` ``(k, n, D)``, ``target`` ``(n, D)``."""
    gram = torch.einsum("ind,jnd->ij", known, known).double()
    right = torch.einsum("ind,nd->i", known, target).double()
    ridge = _RIDGE * (float(gram.diagonal().mean()) or 1.0)
    return torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), right).to(torch.float32)


for _bits in (2, 4):
    CODECS.register(PredictiveProductQuantizer(_bits))

__all__ = ["PredictiveProductQuantizer", "allocate", "RUNS", "FIT_ITEMS"]
