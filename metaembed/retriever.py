"""A searchable collection: one multi-vector index plus the model that fills and queries it.

:class:`Retriever` is what the CLI, the HTTP service and the quickstart share, so that
"build an index from a folder", "search it with text or an image at a budget" and "add or delete
items while searching" behave the same everywhere. The index records the model folder and the
budget ladder in its metadata (see :func:`build_index`), so opening a collection needs only the
index path.

Concurrency: the index itself is thread-safe (a search works on the snapshot it started with, a
write commits atomically), so searches run in parallel and never see a half-applied add or
delete; this module adds one lock around writes so that "check the ids are new, then add" is
atomic. Encoding, the expensive part, runs outside that lock. Query encodes take no lock at all
(the model's Meta Token hook is per thread), so a search never waits behind another request's
encoding; candidate encodes take turns, so concurrent large adds do not pile up in memory.

Other processes (``metaembed index add`` while ``metaembed serve`` runs): every read and write
first calls :meth:`Retriever.refresh`, which costs one catalog read when nothing changed and
otherwise reloads the index's committed state, so a long-lived retriever serves what others commit.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from metaembed.budget import Budget, BudgetLike, parse_ladder
from metaembed.errors import BudgetError, IndexStateError, InputError
from metaembed.ingest import Record, iter_records
from metaembed.model.items import ItemLike

if TYPE_CHECKING:  # imported lazily: torch and transformers are slow to import
    import torch

    from metaembed.index import MultiVectorIndex, SearchResult
    from metaembed.index.filters import FilterLike
    from metaembed.model import MetaEmbedModel

#: Keys this module writes into the index metadata.
MODEL_KEY = "model"
LADDER_KEY = "budgets"


def load_model(path: str | Path) -> "MetaEmbedModel":
    """Load a saved MetaEmbed model folder, with a clear error when it is not one."""
    from metaembed.model import MetaEmbedModel
    # Registers the "bert_vision" family (the quickstart's backbone) until the registry lists it.
    from metaembed.model.backbones import bert_vision  # noqa: F401

    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}")
    return MetaEmbedModel.from_pretrained(folder)


def open_index(path: str | Path) -> "MultiVectorIndex":
    """Open an existing index folder, with a clear error when there is none."""
    from metaembed.index import MultiVectorIndex

    folder = Path(path)
    if not folder.exists():
        raise IndexStateError(f"no index at {folder}: build one with 'metaembed index build'")
    return MultiVectorIndex.open(folder)


class Retriever:
    """An index and its model, safe to search and update from several threads.

    ``index`` holds candidates as ``(num_vectors, dim)`` Meta Token embeddings; ``model`` encodes
    queries to ``(r_q, dim)`` and new candidates to ``(r_c, dim)``. A budget ``(r_q, r_c)`` keeps
    the first ``r_q`` query and ``r_c`` candidate vectors and scores them with MaxSim.
    """

    def __init__(self, index: "MultiVectorIndex", model: "MetaEmbedModel") -> None:
        self.index = index
        self.model = model
        self._write_lock = threading.Lock()
        # Candidate encodes one at a time (bounded memory); query encodes never wait for them.
        self._candidate_lock = threading.Lock()
        if model.embedding_dim != self._index_dim:
            raise IndexStateError(
                f"the model embeds into {model.embedding_dim} dimensions but the index holds "
                f"{self._index_dim}-dimensional vectors"
            )

    @classmethod
    def open(cls, index_path: str | Path, model: "MetaEmbedModel | str | Path | None" = None) -> "Retriever":
        """Open the index at ``index_path`` and the model its metadata names (or ``model``)."""
        index = open_index(index_path)
        if model is None:
            model = index.metadata.get(MODEL_KEY)
            if model is None:
                raise IndexStateError(
                    f"index {index_path} does not record its model; pass the model folder explicitly"
                )
        if isinstance(model, (str, Path)):
            model = load_model(model)
        return cls(index, model)

    # --- what is available -------------------------------------------------------------------
    @property
    def _index_dim(self) -> int:
        return int(self.index.dim)

    @property
    def max_r_q(self) -> int:
        """How many query vectors the model produces."""
        return int(self.model.num_query_tokens)

    @property
    def max_r_c(self) -> int:
        """How many candidate vectors the index stores per item."""
        return int(self.index.num_vectors)

    @property
    def ladder(self) -> tuple[Budget, ...]:
        """The budgets recorded at build time that fit this model and index."""
        recorded = self.index.metadata.get(LADDER_KEY)
        ladder = parse_ladder(recorded) if recorded else parse_ladder(None)
        return tuple(b for b in ladder if b.r_q <= self.max_r_q and b.r_c <= self.max_r_c)

    @property
    def default_budget(self) -> Budget:
        """The budget of a search that names none: the largest of the ladder."""
        ladder = self.ladder
        return ladder[-1] if ladder else Budget(self.max_r_q, self.max_r_c)

    def check_budget(self, budget: BudgetLike | None) -> Budget:
        """Parse ``budget`` (``None`` = :attr:`default_budget`) and check it fits the model and the index.

        This is the one check of a search's budget: here both limits (the model's query
        vectors, the index's stored vectors) are known, so the model encodes and the index
        searches with the checked budget without checking it again.
        Raises :class:`~metaembed.errors.BudgetError` naming what is available.
        """
        if budget is None:
            return self.default_budget
        try:
            return Budget.parse(budget).check_within(self.max_r_q, self.max_r_c, "this index and model")
        except BudgetError as error:
            ladder = " ".join(str(b) for b in self.ladder)
            raise BudgetError(f"{error} (the index's ladder: {ladder})") from None

    def refresh(self) -> bool:
        """Catch up with commits made by other processes; whether anything changed (see module doc)."""
        return self.index.refresh()

    def __len__(self) -> int:
        self.refresh()
        return len(self.index)

    def info(self) -> dict[str, Any]:
        """Model, budgets, size and memory/FLOPs per budget of the ladder, as a JSON-ready dict."""
        self.refresh()
        size = len(self.index)
        per_budget = [
            {
                "budget": str(b),
                "memory_bytes": int(self.index.memory_bytes(b)),
                "flops_per_query": int(self.index.flops(b)),
            }
            for b in self.ladder
        ]
        return {
            "model": str(self.index.metadata.get(MODEL_KEY, "")),
            "size": size,
            "dim": self._index_dim,
            "max_budget": f"{self.max_r_q},{self.max_r_c}",
            "budgets": [str(b) for b in self.ladder],
            "per_budget": per_budget,
            "supports_images": bool(self.model.supports_images),
        }

    # --- search ------------------------------------------------------------------------------
    def search(
        self,
        query: "ItemLike | torch.Tensor",
        k: int = 10,
        budget: BudgetLike | None = None,
        mode: str = "exact",
        filter: "FilterLike | None" = None,
    ) -> list["SearchResult"]:
        """Search with one query (see :meth:`search_many`); return up to ``k`` hits, best first."""
        return self.search_many([query], k=k, budget=budget, mode=mode, filter=filter)[0]

    def search_many(
        self,
        queries: Sequence["ItemLike | torch.Tensor"],
        k: int = 10,
        budget: BudgetLike | None = None,
        mode: str = "exact",
        filter: "FilterLike | None" = None,
    ) -> list[list["SearchResult"]]:
        """Search a batch of queries; one list of hits per query, best first.

        Each query is an item to encode (text, image or both) or an already encoded query: a
        ``torch.Tensor`` ``(R_q, D)`` with ``R_q >= r_q``, as :meth:`encode_queries` or
        ``MetaEmbedModel.encode_queries`` return; the items are encoded together, in one call.
        ``filter`` keeps only candidates whose payload matches (``{"field": value}`` or
        ``{"field": {"in": [values]}}``, see :mod:`metaembed.index.filters`), before top-k.

        ``budget`` and ``filter`` are checked once, here; the ``(Q, r_q, D)`` queries go to the
        index's :meth:`~MultiVectorIndex.search_batch`.
        """
        import torch

        from metaembed.index.filters import PayloadFilter

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        chosen = self.check_budget(budget)
        payload_filter = None if filter is None else PayloadFilter.parse(filter)
        queries = list(queries)
        embeddings = torch.empty(len(queries), chosen.r_q, self._index_dim)
        to_encode = [i for i, query in enumerate(queries) if not isinstance(query, torch.Tensor)]
        for i, query in enumerate(queries):
            if isinstance(query, torch.Tensor):
                embeddings[i] = self._check_query_vectors(query, chosen, i)
        if to_encode:
            embeddings[to_encode] = self.encode_queries([queries[i] for i in to_encode], chosen)
        self.refresh()
        return self.index.search_batch(embeddings, k, chosen, mode, filter=payload_filter)

    def encode_queries(self, queries: Sequence[ItemLike], budget: BudgetLike | None = None) -> "torch.Tensor":
        """Encode query items to fp32 ``(Q, r_q, D)`` at ``budget``'s ``r_q`` (``None``: the default budget)."""
        chosen = self.check_budget(budget)
        return self.model.encode_queries(list(queries), budget=chosen.r_q, show_progress=False)

    def _check_query_vectors(self, vectors: "torch.Tensor", budget: Budget, number: int) -> "torch.Tensor":
        import torch

        if vectors.ndim != 2 or vectors.shape[1] != self._index_dim:
            raise InputError(
                f"query {number}: vectors must have shape (R_q, {self._index_dim}), got {tuple(vectors.shape)}"
            )
        if vectors.shape[0] < budget.r_q:
            raise BudgetError(
                f"query {number}: budget {budget} uses {budget.r_q} query vectors but {vectors.shape[0]} were given"
            )
        if not torch.isfinite(vectors).all():
            raise InputError(f"query {number}: vectors contain NaN or inf")
        return vectors[: budget.r_q]

    # --- items -------------------------------------------------------------------------------
    def get(self, item_id: str, vectors: bool = False) -> dict[str, Any] | None:
        """``{"id", "payload"}`` of a stored item (with ``"vectors"``, fp32 ``(num_vectors, D)`` as
        nested lists, if asked), or ``None`` when it is not in the index."""
        self.refresh()
        if item_id not in self.index:
            return None
        found: dict[str, Any] = {"id": item_id, "payload": self.index.payloads([item_id]).get(item_id) or {}}
        if vectors:
            try:
                found["vectors"] = self.index.vectors([item_id])[0].tolist()
            except IndexStateError:  # deleted between the check and the read
                return None
        return found

    def contains(self, item_id: str) -> bool:
        """Whether ``item_id`` is in the index."""
        self.refresh()
        return item_id in self.index

    # --- updates -----------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        items: Sequence[ItemLike],
        payloads: Sequence[dict] | None = None,
        batch_size: int = 8,
    ) -> None:
        """Encode ``items`` as candidates and add them under ``ids``: all or nothing.

        Raises :class:`IndexStateError` naming the ids already in the index (nothing is added).
        """
        self._write(ids, items, payloads, batch_size, replace=False)

    def upsert(
        self,
        ids: Sequence[str],
        items: Sequence[ItemLike],
        payloads: Sequence[dict] | None = None,
        batch_size: int = 8,
    ) -> list[str]:
        """Encode ``items`` and store them under ``ids``, replacing the vectors and payload of ids
        already present, in one commit. Returns the ids that were replaced (the others are new)."""
        return self._write(ids, items, payloads, batch_size, replace=True)

    def _write(
        self, ids: Sequence[str], items: Sequence[ItemLike], payloads: Sequence[dict] | None, batch_size: int,
        replace: bool,
    ) -> list[str]:
        if len(ids) != len(items):
            raise InputError(f"got {len(ids)} ids for {len(items)} items")
        if not ids:
            return []
        payloads = list(payloads) if payloads is not None else [{} for _ in ids]
        if not replace:
            self.refresh()
            self._check_new(ids)  # fail before paying for the encoding
        with self._candidate_lock:
            embeddings = self.model.encode_candidates(list(items), batch_size=batch_size, show_progress=False)
        with self._write_lock:
            self.refresh()
            if not replace:
                self._check_new(ids)  # another writer may have added them meanwhile
            replaced = [i for i in ids if i in self.index]
            (self.index.upsert if replace else self.index.add)(list(ids), embeddings, payloads)
        return replaced

    def _check_new(self, ids: Sequence[str]) -> None:
        present = [i for i in ids if i in self.index]
        if present:
            raise IndexStateError(f"ids already in the index: {present[:5]}" + (" ..." if len(present) > 5 else ""))

    def delete(self, ids: Sequence[str]) -> None:
        """Remove ``ids`` from the index; unknown ids raise :class:`IndexStateError`."""
        with self._write_lock:
            self.index.delete(list(ids))  # the index refreshes first: ids others added are known


def build_index(
    model: "MetaEmbedModel | str | Path",
    source: str | Path,
    out: str | Path,
    *,
    model_path: str | Path | None = None,
    budgets: str | Iterable[BudgetLike] | None = None,
    batch_size: int = 16,
    dtype: str = "float16",
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> "Retriever":
    """Embed every record of ``source`` (folder or JSONL) into the index at ``out``.

    ``model`` is a saved model folder or a loaded model; with a loaded model, ``model_path`` names
    the folder it was saved to (recorded so that the index can be opened by path alone).
    Creates the index when ``out`` does not exist (recording the model folder and the ``budgets``
    ladder in its metadata) and otherwise *resumes*: records whose id is already in the index are
    skipped, so an interrupted build continues where it stopped. Records are added one batch at a
    time; each batch is written before the next is encoded.
    """
    from metaembed.index import MultiVectorIndex

    records = iter_records(source)  # a missing or unreadable input fails before anything is created
    out = Path(out)
    if isinstance(model, (str, Path)):
        model_path = model
    model_path = str(Path(model_path).resolve()) if model_path is not None else None
    index = None
    if out.exists():
        index = open_index(out)
        recorded = index.metadata.get(MODEL_KEY)
        if model_path is not None and recorded and Path(recorded).resolve() != Path(model_path):
            raise IndexStateError(
                f"index {out} was built with model {recorded}, not {model_path}; "
                "use a new --out or the same model"
            )
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if index is None:
        ladder = parse_ladder(budgets)
        for b in ladder:
            b.check_within(model.num_query_tokens, model.num_candidate_tokens, "the model")
        metadata = {MODEL_KEY: model_path or "", LADDER_KEY: [str(b) for b in ladder]}
        index = MultiVectorIndex.create(
            out, dim=model.embedding_dim, num_vectors=model.num_candidate_tokens, dtype=dtype, metadata=metadata
        )
    retriever = Retriever(index, model)
    records = [r for r in records if not retriever.contains(r.id)]
    for done in _add_in_batches(retriever, records, batch_size, progress):
        if on_batch is not None:
            on_batch(done)
    return retriever


def _add_in_batches(retriever: Retriever, records: list[Record], batch_size: int, progress: bool) -> Iterator[int]:
    from tqdm.auto import tqdm

    seen: set[str] = set()
    with tqdm(total=len(records), unit="item", disable=not progress, desc="indexing") as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            for record in batch:
                if record.id in seen:
                    raise InputError(f"id {record.id!r} appears twice in the input")
                seen.add(record.id)
            retriever.add(
                [r.id for r in batch], [r.item() for r in batch], [r.payload for r in batch], batch_size=batch_size
            )
            bar.update(len(batch))
            yield start + len(batch)
