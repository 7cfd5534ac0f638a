"""Storage codecs: how an index turns fp32 vectors into stored codes, and how a search scores them.

The index stores every vector once, in the codec chosen at creation (its ``dtype``), and a
search hands the stored codes to the MaxSim kernel of :mod:`metaembed.scoring` block by
block. A codec is a small object with a ``name``:

``file_dtype`` / ``code_width(dim)``
    the numpy dtype of the segment file and its elements per stored vector (``dim`` for the
    float and int8 codecs; fewer for a compressed one).
``scale_groups(dim)``
    fp32 side values per vector kept in a second file (int8's group scales); 0 for none.
``encode(vectors)`` / ``decode(codes, scales)``
    fp32 ``(..., D)`` to ``(codes (..., W), scales (..., G) or None)`` and back to fp32.
``bytes_per_item(r_c, dim)``
    what one candidate costs at budget ``r_c`` (:func:`embedding_bytes` multiplies it out).
``slots(r_c)`` / ``decode_prefix(codes, scales, r_c)``
    the stored positions a prefix of ``r_c`` vectors occupies (``r_c`` but for a codec that
    spends its bytes unevenly over the positions, :mod:`.predictive`) and its decoding.
``source(codes, scales, column, r_c)``
    position-major codes ``(slots(r_c), n, W)`` as a :class:`~metaembed.scoring.CandidateSource`:
    a codec whose codes the kernel reads (``kernel_dtype`` set) hands views of them, no copy;
    any other codec decodes the block to fp32 first (the base class does that).
``check_dim(dim)``
    :class:`~metaembed.errors.InputError` if the codec cannot store vectors of dimension ``dim``.

A *trained* codec (``trained = True``: product quantisation in :mod:`.pq`) learns parameters
(codebooks) from data. The registered object is untrained; ``fit(sample)`` returns a trained
copy, ``state()`` its parameters as named arrays and ``with_state(arrays)`` the copy rebuilt
from them. An index trains its codec once, on the vectors of its first add, and keeps the
state in a checksummed file beside its segments (:mod:`metaembed.index.codebook`).

Adding a codec is one new module in this package with a :class:`Codec` subclass and a
``CODECS.register(...)`` call (every module here is imported on the first lookup), or a
``CODECS.register`` call from anywhere before the index is created. The first members:
``float32`` (exact), ``float16`` (the default) and ``bfloat16`` in :mod:`.floats`,
``int8`` with a scale per 64 values in :mod:`.int8`, and the product quantisers ``pq4``,
``pq2`` and ``pq1`` (4, 2 and 1 bits a value: 1/4, 1/8 and 1/16 of float16) in :mod:`.pq`,
``apq2`` (pq2's bytes, codes chosen for inner products by the anisotropic loss) in :mod:`.anisotropic`,
and ``ppq2`` / ``ppq4`` (pq2's / pq4's bytes per item, each vector coded as the residual of a
prediction from the item's earlier vectors, vector 0 at a byte a value) in :mod:`.predictive`.

>>> embedding_bytes(64, 128, "float16"), embedding_bytes(64, 128, "int8")
(16384, 8704)
>>> get_codec("float16").bytes_per_item(8, 128)
2048
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch

from metaembed.registry import Registry
from metaembed.scoring import CandidateSource


def tensor_view(array: np.ndarray) -> torch.Tensor:
    """``array`` (a numpy array or a read-only memmap) as a torch tensor sharing its memory."""
    with warnings.catch_warnings():
        # Memmaps are opened read-only and torch only reads them; torch warns that it cannot enforce that.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class Codec:
    """One storage precision of an index; see the module docstring for the interface.

    Subclasses set :attr:`name` and :attr:`file_dtype` and implement :meth:`encode` and
    :meth:`decode`; the rest has defaults that fit a codec storing ``D`` values per vector.
    """

    #: the index ``dtype`` this codec is created with
    name: str = ""
    #: numpy dtype of the segment file's elements
    file_dtype: np.dtype = np.dtype(np.float32)
    #: torch dtype the MaxSim kernel reads the codes as, or ``None`` when it cannot (then :meth:`source` decodes)
    kernel_dtype: ClassVar[torch.dtype | None] = None

    def code_width(self, dim: int) -> int:
        """Elements of :attr:`file_dtype` stored per vector of dimension ``dim``."""
        return int(dim)

    #: whether vectors carry fp32 scales in a second file (then :meth:`scale_groups` is positive)
    has_scale: ClassVar[bool] = False

    def scale_groups(self, dim: int) -> int:
        """fp32 scales stored beside the codes per vector (``0``: no scale file)."""
        return 0

    #: whether the codec learns parameters from data before it can encode (see the module docstring)
    trained: ClassVar[bool] = False
    #: vectors a trained codec learns from at most (a larger sample is subsampled)
    training_vectors: ClassVar[int] = 0

    def check_dim(self, dim: int) -> None:
        """:class:`~metaembed.errors.InputError` if vectors of dimension ``dim`` cannot be stored."""

    @property
    def fitted(self) -> bool:
        """Whether the codec can encode: always for an untrained codec, after :meth:`fit` for a trained one."""
        return True

    def fit(self, sample: torch.Tensor) -> "Codec":
        """A copy of this codec trained on fp32 ``sample``: items ``(n, R, D)`` (what an index's first add hands it) or vectors ``(n, D)``.

        An untrained codec returns itself; the per-vector quantisers flatten the items.
        """
        return self

    def state(self) -> dict[str, np.ndarray]:
        """A trained codec's parameters as named arrays (empty for an untrained codec)."""
        return {}

    def with_state(self, state: dict[str, np.ndarray]) -> "Codec":
        """The trained copy whose :meth:`state` is ``state`` (``ValueError`` if it does not fit this codec)."""
        return self

    def bytes_per_item(self, r_c: int, dim: int) -> int:
        """Bytes one candidate's first ``r_c`` vectors take: codes plus scales (the ``slots(r_c)`` slabs read)."""
        per_vector = self.code_width(dim) * np.dtype(self.file_dtype).itemsize + 4 * self.scale_groups(dim)
        return self.slots(int(r_c)) * per_vector

    def slots(self, r_c: int) -> int:
        """Stored positions (slabs of ``W`` elements) that hold the first ``r_c`` vectors of each item.

        ``r_c`` for every codec that stores vector ``j`` at position ``j``; a codec that spends
        its bytes unevenly over the positions (:mod:`.predictive`) packs each item's vectors
        into one byte stream cut into ``R`` slabs, so a prefix may need more (or fewer) slabs.
        """
        return int(r_c)

    def encode(self, vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """fp32 ``vectors`` ``(..., D)`` as ``(codes (..., W) of file_dtype, scales (..., G) fp32 or None)``."""
        raise NotImplementedError

    def decode(self, codes: np.ndarray, scales: np.ndarray | None) -> torch.Tensor:
        """The fp32 ``(..., D)`` values that ``codes`` (and ``scales``) stand for: the inverse of :meth:`encode`."""
        raise NotImplementedError

    def decode_prefix(self, codes: np.ndarray, scales: np.ndarray | None, r_c: int) -> torch.Tensor:
        """fp32 ``(r_c, ..., D)``: the first ``r_c`` vectors held by position-major ``codes`` ``(slots(r_c), ..., W)``."""
        return self.decode(codes, scales)

    def as_torch(self, codes: np.ndarray) -> torch.Tensor:
        """``codes`` (a numpy array or read-only memmap) as a torch tensor of :attr:`kernel_dtype`, no copy."""
        tensor = tensor_view(codes)
        return tensor if self.kernel_dtype is None else tensor.view(self.kernel_dtype)

    def source(self, codes: np.ndarray, scales: np.ndarray | None, column: int = 0, r_c: int | None = None) -> CandidateSource:
        """Position-major ``codes`` ``(slots(r_c), n, W)`` (and ``scales``) as the kernel's ``r_c`` positions.

        ``r_c`` defaults to ``codes.shape[0]`` (one vector per stored position). The result's
        candidates go to the output columns from ``column`` on. Codecs the kernel reads set
        :attr:`kernel_dtype` and get views of their codes; for any other, the source decodes with
        :meth:`decode_prefix` chunk by chunk as the kernel's tasks score them
        (:attr:`CandidateSource.decode`), so no fp32 copy of the block is made.
        """
        count = int(codes.shape[0]) if r_c is None else int(r_c)
        if self.kernel_dtype is None:
            def decode(start: int, stop: int) -> list[torch.Tensor]:
                part = None if scales is None else scales[:, start:stop]
                return list(self.decode_prefix(codes[:, start:stop], part, count))

            return CandidateSource([tensor_view(codes[0])] * count, None, column, decode=decode)
        positions = [self.as_torch(codes[j]) for j in range(count)]
        position_scales = None
        if scales is not None:
            position_scales = [tensor_view(np.ascontiguousarray(scales[j])) for j in range(count)]
        return CandidateSource(positions, position_scales, column)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


#: The storage codecs by name; see the module docstring for adding one.
CODECS: Registry[Codec] = Registry("index dtype", __name__)


def get_codec(name: str) -> Codec:
    """The codec called ``name``; :class:`~metaembed.errors.InputError` naming the known ones otherwise."""
    return CODECS.get(name)


def codec_names() -> list[str]:
    """Names of the registered codecs (the ``dtype`` values an index may be created with)."""
    return CODECS.names()


def embedding_bytes(num_vectors: int, dim: int, dtype: str = "float16", num_candidates: int = 1) -> int:
    """Bytes to store ``num_vectors`` vectors of dimension ``dim`` for each of ``num_candidates``.

    ``dtype`` names a codec (``"float32"``, ``"float16"``, ``"bfloat16"``, ``"int8"``, ``"pq2"``, or
    any registered one); int8 costs one byte per value plus a 4-byte fp32 scale per group of 64,
    ``pq2`` one byte per 4 values (its codebooks, a few hundred KB per index, are not counted).
    """
    return int(num_candidates) * get_codec(dtype).bytes_per_item(num_vectors, dim)


__all__ = ["Codec", "CODECS", "get_codec", "codec_names", "embedding_bytes", "tensor_view"]
