"""MultiVectorIndex: a persistent, crash-safe multi-vector index searched at any budget.

Candidates are stored once at ``num_vectors`` (the largest ``r_c``) and every
search picks its budget ``(r_q, r_c)``. On disk an index is a folder::

    catalog.sqlite        ids, payloads, configuration, committed segments (the commit point)
    seg-<uuid>.vec        (num_vectors, rows, dim) vectors, position-major, storage dtype
    seg-<uuid>.scale      (num_vectors, rows, G) fp32 scales, one per group of dim/G values (int8 only)
    codec-<uuid>.npz      a trained codec's codebooks (pq*), learnt from the first add (metaembed.index.codebook)

    writer.lock           held by the process committing a write (see :mod:`metaembed.index.lock`)

Every ``add`` / ``upsert`` writes one new segment file and commits it with its
ids in one SQLite transaction; ``delete`` commits tombstones; ``save`` merges
segments (reclaiming tombstones) and commits the swap. Files are fsynced before
the commit that references them, so a writer killed at any point leaves the
index at its last commit (see :mod:`metaembed.index.store`); ``create`` builds
the folder under a temporary name and renames it into place.

Integrity: segment files and catalog rows carry checksums, checked when read
(a chunk of a segment the first time a search reads it);
:meth:`MultiVectorIndex.check` reads everything and :meth:`MultiVectorIndex.repair`
drops what is damaged. Damage is an :class:`~metaembed.errors.IndexCorruptError`
naming the file, a full disk a :class:`~metaembed.errors.StorageFullError`.

Concurrency: one writer at a time across processes (a second one waits for the
lock, then gets :class:`~metaembed.errors.IndexBusyError`) and any number of
readers, here or in other processes. A search works on an immutable snapshot of
the segments, so it never waits for a write to finish; :meth:`MultiVectorIndex.refresh`
moves a long-lived reader to the newest commit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from metaembed.budget import DEFAULT_SHORTLIST, Budget, BudgetLike
from metaembed.errors import IndexCorruptError, IndexStateError, InputError
from metaembed.index.catalog import Catalog, Damage
from metaembed.index.files import new_staging_folder, publish_folder, storage_errors
from metaembed.index.lock import DEFAULT_TIMEOUT
from metaembed.index.filters import PayloadFilter
from metaembed.index.inputs import id_list, json_dict, json_payloads, positive_int, unique_ids
from metaembed.index.codecs import get_codec
from metaembed.index.first_stages import EXACT, FIRST_STAGES, FirstStage, search_modes
from metaembed.index.search import SegmentView, exact_topk, rerank, resolve
from metaembed.index.searcher import SearchMode, SearchResult, Searcher
from metaembed.index.store import SegmentStore
from metaembed.scoring import ArrayLike, as_tensor, maxsim_flops

_QUERY_BATCH = 256


class MultiVectorIndex(Searcher):
    """A persistent multi-vector index with budgeted MaxSim search.

    Create with :meth:`create`, reopen with :meth:`open`. Candidates are
    ``(N, R, D)`` embeddings with ``R >= num_vectors`` (only the first
    ``num_vectors`` are kept: MetaEmbed's prefixes are nested) and ``D == dim``.
    """

    def __init__(self, store: SegmentStore, scratch: tempfile.TemporaryDirectory | None = None) -> None:
        self._store = store
        self._scratch = scratch  # owns the folder of an index created without a path
        self._first_stages: dict[str, FirstStage] = {}  # by mode, made on first use (the ANN graph lives here)

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(
        cls,
        path: str | Path | None,
        dim: int,
        num_vectors: int,
        dtype: str = "float16",
        metadata: dict[str, Any] | None = None,
    ) -> "MultiVectorIndex":
        """Create an empty index.

        Args:
            path: a folder that does not exist yet (or is empty). ``None`` makes a
                temporary index in a scratch folder, deleted when the index is
                closed; :meth:`save` with a path makes it persistent.
            dim: vector dimension ``D``.
            num_vectors: vectors stored per candidate (the largest ``r_c``).
            dtype: storage precision, ``"float16"`` (default), ``"bfloat16"``,
                ``"int8"`` (a scale per 64 values), ``"float32"``, the product quantisers
                ``"pq4"`` / ``"pq2"`` / ``"pq1"`` (1/4, 1/8, 1/16 of float16; their codebooks
                are learnt from the first add, which needs at least 256 vectors) or any codec
                registered in :mod:`metaembed.index.codecs`.
            metadata: JSON-able dict stored with the index (model path, budgets, ...).
        """
        dim, num_vectors = positive_int(dim, "dim"), positive_int(num_vectors, "num_vectors")
        codec = get_codec(dtype)
        codec.check_dim(dim)
        json_dict(metadata, "metadata")
        config = {"dim": dim, "num_vectors": num_vectors, "dtype": dtype, "metadata": dict(metadata or {})}
        if codec.has_scale:
            config["scale_groups"] = codec.scale_groups(dim)
        if path is None:
            scratch = tempfile.TemporaryDirectory(prefix="metaembed-index-")
            folder = Path(scratch.name)
            Catalog.create(folder, config)
            return cls(SegmentStore(folder, Catalog.open(folder)), scratch)
        folder = Path(path)
        _check_empty(folder, "create an index")
        # Built under a temporary name and renamed into place: a create killed at any
        # moment leaves no folder (or a complete empty index), and creating again works.
        with storage_errors(folder.parent, "create the index"):
            staging = new_staging_folder(folder)
            try:
                Catalog.create(staging, config)
                publish_folder(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return cls.open(folder)

    @classmethod
    def open(cls, path: str | Path, *, lock_timeout: float = DEFAULT_TIMEOUT) -> "MultiVectorIndex":
        """Open an index folder at its last committed state; :class:`IndexStateError` if it is not one.

        Opening reads the catalog and checks its rows and the sizes of the segment files
        (:class:`~metaembed.errors.IndexCorruptError` naming the file if one is damaged);
        segment contents are checked chunk by chunk as searches first read them.
        ``lock_timeout``: seconds a write waits for another process's commit to finish
        before :class:`~metaembed.errors.IndexBusyError`.
        """
        folder = Path(path)
        return cls(SegmentStore(folder, Catalog.open(folder), lock_timeout))

    @staticmethod
    def check(path: str | Path) -> list[Damage]:
        """Read every byte of the index at ``path`` and list what is damaged (empty: the index is sound).

        Checks SQLite's pages, every catalog row and payload against its checksum, and
        every chunk of every segment file (NaN/inf for an index written before checksums).
        A damaged configuration (dimension, precision) raises :class:`IndexCorruptError`:
        nothing else can be read without it.
        """
        folder = Path(path)
        store = SegmentStore(folder, Catalog.open(folder), tolerate=True)
        try:
            return store.find_damage()
        finally:
            store.close()

    @staticmethod
    def repair(path: str | Path) -> list[str]:
        """Drop the damaged segments and catalog rows :meth:`check` finds, in one commit.

        Returns the ids that were dropped (sorted): add them again from their source
        (``metaembed index repair --input`` does). Everything else is kept as it was.
        """
        folder = Path(path)
        store = SegmentStore(folder, Catalog.open(folder), tolerate=True)
        try:
            damage = store.find_damage()
            return store.repair(damage) if damage else []
        finally:
            store.close()

    def verify(self) -> None:
        """Read every byte of this index; :class:`IndexCorruptError` naming each damaged file if any."""
        damage = self._store.find_damage()
        if damage:
            listed = "; ".join(f"{d.file}: {d.message}" for d in damage[:5])
            raise IndexCorruptError(f"index {str(self._store.folder)!r} is damaged ({len(damage)} problems): {listed}")

    def refresh(self) -> bool:
        """Move to the newest committed state (commits by other processes); ``True`` if it changed.

        Cheap when nothing changed (one catalog read); searches running meanwhile keep their snapshot.
        First stages keep their state: segments are immutable and named once, so the ``ann`` graph
        adds the new segments' rows, filters deleted ones, and is rebuilt only when a compaction
        merged segments away (as after this process's own writes).
        """
        return self._store.refresh()

    def close(self) -> None:
        """Release the catalog and memory maps; a scratch (``path=None``) index is deleted."""
        self._store.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    def __enter__(self) -> "MultiVectorIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(self, path: str | Path | None = None) -> None:
        """Compact and make the index durable; with ``path``, also copy it there and continue from the copy.

        Every write is already committed when it returns; ``save()`` additionally
        reclaims deleted rows and commits in-place :attr:`metadata` changes.
        ``save(path)`` writes a complete copy into a staging folder beside ``path``
        and renames it into place, so ``path`` holds the whole index or nothing.
        ``path`` must not exist or be empty.
        """
        store = self._store
        with store.write_lock:
            store.persist_metadata()
            store.compact()
            if path is None or (self.path is not None and Path(path).resolve() == store.folder.resolve()):
                if self._scratch is not None:
                    raise IndexStateError("this index was created without a path: give save() a folder")
                return
            target = Path(path)
            _check_empty(target, "save the index")
            store.copy_to(target)
            store.close()
            self._store = SegmentStore(target, Catalog.open(target), store.lock.timeout)
            self._first_stages = {}
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    # ----------------------------------------------------------------- properties
    @property
    def path(self) -> Path | None:
        """The index folder, ``None`` for an unsaved scratch index."""
        return None if self._scratch is not None else self._store.folder

    @property
    def dim(self) -> int:
        return self._store.dim

    @property
    def num_vectors(self) -> int:
        """Vectors stored per candidate: the largest ``r_c`` a search may use."""
        return self._store.num_vectors

    @property
    def dtype(self) -> str:
        """The storage codec's name: ``"float16"``, ``"bfloat16"``, ``"int8"``, ``"float32"`` or a registered one."""
        return self._store.fmt.name

    @property
    def training_items(self) -> int:
        """Items the next add should hold for the codec to learn from them (0: it needs no training).

        A trained codec (``pq*``) learns from the first add; a bulk build holds its first
        batches back until they reach this many items (see :func:`metaembed.retriever.update_index`).
        """
        fmt = self._store.fmt
        return 0 if fmt.fitted else -(-fmt.training_vectors // self.num_vectors)

    @property
    def metadata(self) -> dict[str, Any]:
        """A JSON-able dict stored with the index. Assigning persists it at once;
        changes made to the returned dict in place persist at the next write or :meth:`save`."""
        return self._store.metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise InputError(f"metadata must be a dict, got {type(value).__name__}")
        json_dict(value, "metadata")
        self._store.set_metadata(value)

    @property
    def ids(self) -> list[str]:
        """Live ids in storage order."""
        return [item_id for view in self._store.views for item_id in view.ids if item_id is not None]

    def __len__(self) -> int:
        return len(self._store.where)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._store.where

    def __repr__(self) -> str:
        return (f"MultiVectorIndex({str(self.path or '<scratch>')!r}, items={len(self)}, dim={self.dim}, "
                f"num_vectors={self.num_vectors}, dtype={self.dtype!r})")

    def memory_bytes(self, budget: BudgetLike | None = None) -> int:
        """Bytes of candidate vectors a search at ``budget`` reads: ``len(self)`` times the first ``r_c`` vectors' slabs.

        ``None`` counts all ``num_vectors`` (the stored size). Budgets are checked against ``num_vectors``.
        The trained codec counts (``ppq*`` spends more of an item's bytes on its first vectors).
        """
        r_c = self.check_budget(budget).r_c
        return len(self) * self._store.fmt.bytes_per_item(r_c, self.dim)

    def flops(self, budget: BudgetLike | None = None, num_queries: int = 1) -> int:
        """Multiply-add FLOPs of an exact search of ``num_queries`` queries at ``budget`` (``2 r_q r_c D`` per pair)."""
        return maxsim_flops(self.check_budget(budget), self.dim, num_candidates=len(self), num_queries=num_queries)

    # ----------------------------------------------------------------- reads and writes
    def vectors(self, ids: Sequence[str]) -> torch.Tensor:
        """The stored vectors of ``ids`` as fp32 ``(N, num_vectors, D)``, decoded from the storage precision."""
        return self._store.vectors(id_list(ids))

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """The stored payloads of those ``ids`` that are in the index (``None`` where none was stored)."""
        return self._store.payloads(id_list(ids))

    def export(
        self, r_c: int | None = None, batch: int = 4096, payloads: bool = False
    ) -> Iterator[tuple[list[str], torch.Tensor]] | Iterator[tuple[list[str], torch.Tensor, list[dict | None]]]:
        """Every live candidate in storage order, in batches: ``(ids, vectors)`` with fp32 ``(n, r_c, D)``.

        ``r_c`` (default ``num_vectors``) keeps the first ``r_c`` vectors. Reads
        the memory-mapped segments sequentially, one batch at a time. With
        ``payloads=True`` each batch is ``(ids, vectors, payloads)``, the payloads
        (dicts, ``None`` where none was stored) in the order of ``ids``.
        """
        r_c = self.check_budget((1, r_c or self.num_vectors)).r_c
        batches = self._store.export(r_c, positive_int(batch, "batch"))
        if not payloads:
            return batches
        return ((ids, vectors, self._payloads_of(ids)) for ids, vectors in batches)

    def _payloads_of(self, ids: list[str]) -> list[dict | None]:
        found = self.payloads(ids)
        return [found.get(item_id) for item_id in ids]

    def _check_embeddings(self, embeddings: ArrayLike, count: int) -> torch.Tensor:
        values = as_tensor(embeddings, "embeddings")
        if values.ndim != 3:
            raise InputError(f"embeddings must have shape (N, R, D), got shape {tuple(values.shape)}")
        n, r, d = values.shape
        if n != count:
            raise InputError(f"got {count} ids but {n} embeddings")
        if d != self.dim:
            raise InputError(f"embeddings have dimension D={d} but the index stores D={self.dim}")
        if r < self.num_vectors:
            raise InputError(
                f"embeddings have {r} vectors per item but the index stores {self.num_vectors}; "
                f"create the index with num_vectors<={r}"
            )
        return values

    def add(self, ids: Sequence[str], embeddings: ArrayLike, payloads: Sequence[dict | None] | None = None) -> None:
        """Add new candidates.

        Args:
            ids: ``N`` unique, non-empty strings not yet in the index.
            embeddings: ``(N, R, D)`` with ``R >= num_vectors``, float32/float16/bfloat16
                (torch or numpy; a numpy memmap is read in blocks).
            payloads: optional JSON-able dicts returned with search results.

        Raises :class:`IndexStateError` for ids already present or repeated,
        :class:`InputError` for a wrong shape, dtype or NaN/inf values. Nothing
        is stored unless everything is valid.
        """
        self._write(ids, embeddings, payloads, replace=False)

    def upsert(
        self,
        ids: Sequence[str],
        embeddings: ArrayLike,
        payloads: Sequence[dict | None] | None = None,
        delete: Sequence[str] = (),
    ) -> None:
        """Add candidates, replacing (vectors and payload) those whose id already exists. One commit.

        ``delete``: ids (in the index, not among ``ids``) removed in the same commit, so a
        collection can be brought up to date (edits, additions, removals) all at once.
        """
        self._write(ids, embeddings, payloads, replace=True, delete=delete)

    def _write(self, ids: Sequence[str], embeddings: ArrayLike, payloads: Any, replace: bool, delete: Sequence[str] = ()) -> None:
        ids = unique_ids(ids)
        values = self._check_embeddings(embeddings, len(ids))
        encoded = json_payloads(payloads, len(ids))
        drop = list(dict.fromkeys(id_list(delete)))
        if set(drop) & set(ids):
            raise InputError(f"ids both upserted and deleted: {sorted(set(drop) & set(ids))[:5]}")
        if ids:
            self._store.write(ids, values, encoded, replace, drop)
        elif drop:
            self._store.delete(drop)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove candidates by id. :class:`IndexStateError` naming them if any id is not in the index."""
        self._store.delete(list(dict.fromkeys(id_list(ids))))

    def compact(self) -> None:
        """Reclaim deleted rows and merge segments (also done by :meth:`save`)."""
        self._store.compact()

    # ----------------------------------------------------------------- search
    def search_batch(
        self,
        queries: torch.Tensor,
        k: int,
        budget: Budget,
        mode: SearchMode = "exact",
        shortlist: int = DEFAULT_SHORTLIST,
        first_stage_budget: Budget = Budget(1, 1),
        filter: PayloadFilter | None = None,
    ) -> list[list[SearchResult]]:
        """:meth:`~metaembed.index.searcher.Searcher.search` on checked inputs: fp32 ``(Q, R_q, D)``
        queries and budgets that fit them and the index (see :meth:`check_budget`), among the
        candidates whose payload matches ``filter``."""
        stage = self._first_stage(mode)
        if stage is not None:
            stage.check_budget(first_stage_budget)
        # the snapshot this search works on; a filter kills the rows it rejects, as a delete would
        views = self._store.views if filter is None else self._store.filtered_views(filter)
        if not views:
            return [[] for _ in range(queries.shape[0])]
        results: list[list[SearchResult]] = []
        for start in range(0, queries.shape[0], _QUERY_BATCH):
            batch = queries[start : start + _QUERY_BATCH]
            if stage is None:
                scores, refs = exact_topk(views, batch, budget.r_q, budget.r_c, k)
            else:
                candidates = stage.shortlist(views, batch, first_stage_budget, max(shortlist, k))
                scores, refs = rerank(views, batch, candidates, budget.r_q, budget.r_c, k)
            results.extend(self._results(views, scores, refs))
        return results

    def _first_stage(self, mode: SearchMode) -> FirstStage | None:
        """The first stage ``mode`` selects (``None`` for exact search); one instance per index and mode."""
        if isinstance(mode, FirstStage):
            return mode
        if mode == EXACT:
            return None
        if not isinstance(mode, str) or mode not in FIRST_STAGES:
            raise InputError(f"unknown search mode {mode!r}; expected one of {search_modes()}")
        with self._store.state_lock:
            if mode not in self._first_stages:
                stage = FIRST_STAGES.get(mode)(self.dim)
                stage.folder = self.path
                self._first_stages[mode] = stage
            return self._first_stages[mode]

    def _results(self, views: tuple[SegmentView, ...], scores: torch.Tensor, refs: torch.Tensor) -> list[list[SearchResult]]:
        ids = resolve(views, refs)
        wanted = sorted({i for row in ids for i in row})
        payloads = self._store.payloads(wanted)
        return [
            [
                SearchResult(item_id, float(score), payloads.get(item_id) or {}, rank)
                for rank, (item_id, score) in enumerate(zip(row, row_scores), start=1)
            ]
            for row, row_scores in zip(ids, scores.tolist())
        ]


def _check_empty(folder: Path, action: str) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise IndexStateError(f"cannot {action} at {str(folder)!r}: it exists and is not empty")


__all__ = ["MultiVectorIndex"]
