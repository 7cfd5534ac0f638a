"""A searchable collection: one multi-vector index plus the model that fills and queries it.

:class:`Retriever` is what the CLI, the HTTP service and the quickstart share, so that
"build an index from a folder", "search it with text or an image at a budget" and "add or delete
items while searching" behave the same everywhere. The index records the model folder and the
budget ladder in its metadata (see :func:`build_index`), so opening a collection needs only the
index path.

Concurrency: the index itself is thread-safe (a search works on the snapshot it started with, a
write commits atomically), so searches run in parallel and never see a half-applied add or
delete; this module adds one lock around writes so that "check the ids are new, then add" is
atomic. Encoding, the expensive part, runs outside any lock.
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
    from metaembed.index import MultiVectorIndex, SearchResult
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
        # MetaEmbedModel injects its Meta Tokens through a forward hook on the shared embedding
        # module, so two encodes running at once would see each other's hooks: one at a time.
        self._encode_lock = threading.Lock()
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

    def __len__(self) -> int:
        return len(self.index)

    def info(self) -> dict[str, Any]:
        """Model, budgets, size and memory/FLOPs per budget of the ladder, as a JSON-ready dict."""
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
        self, query: ItemLike, k: int = 10, budget: BudgetLike | None = None, mode: str = "exact"
    ) -> list["SearchResult"]:
        """Search with one query item (text, image or both); return up to ``k`` hits, best first."""
        return self.search_many([query], k=k, budget=budget, mode=mode)[0]

    def search_many(
        self, queries: Sequence[ItemLike], k: int = 10, budget: BudgetLike | None = None, mode: str = "exact"
    ) -> list[list["SearchResult"]]:
        """Search a batch of query items; one list of hits per query, best first.

        ``budget`` is checked once, by :meth:`check_budget`; the model's output (all its query
        vectors, fp32, finite) goes to the index's :meth:`~MultiVectorIndex.search_batch`,
        which reads the first ``r_q`` of them.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        chosen = self.check_budget(budget)
        with self._encode_lock:
            embeddings = self.model.encode_queries(list(queries), show_progress=False)
        return self.index.search_batch(embeddings, k, chosen, mode)

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
        if len(ids) != len(items):
            raise InputError(f"got {len(ids)} ids for {len(items)} items")
        if not ids:
            return
        payloads = list(payloads) if payloads is not None else [{} for _ in ids]
        self._check_new(ids)  # fail before paying for the encoding
        with self._encode_lock:
            embeddings = self.model.encode_candidates(list(items), batch_size=batch_size, show_progress=False)
        with self._write_lock:
            self._check_new(ids)  # another writer may have added them meanwhile
            self.index.add(list(ids), embeddings, payloads)

    def _check_new(self, ids: Sequence[str]) -> None:
        present = [i for i in ids if i in self.index]
        if present:
            raise IndexStateError(f"ids already in the index: {present[:5]}" + (" ..." if len(present) > 5 else ""))

    def delete(self, ids: Sequence[str]) -> None:
        """Remove ``ids`` from the index; unknown ids raise :class:`IndexStateError`."""
        with self._write_lock:
            self.index.delete(list(ids))

    def contains(self, item_id: str) -> bool:
        """Whether ``item_id`` is in the index."""
        return item_id in self.index


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
