"""A searchable collection: one multi-vector index plus the model that fills and queries it.

:class:`Retriever` is what the CLI, the HTTP service and the quickstart share, so that
"build an index from a folder", "search it with text or an image at a budget" and "add or delete
items while searching" behave the same everywhere. The index records in its metadata:

* the model, by built-in name (``"metaembed-minilm"``) or by a path *relative to the index
  folder* (``"model"`` for a copy held inside it, ``"../my-model"``), so an index and its model
  moved together still open; ``--model`` (``Retriever.open(..., model=)``) overrides it;
* the indexed folder (relative to the index, like the model); stored file paths are relative to it;
* the budget ladder, and the model's query-vector count and modality, so that describing an index
  or checking a budget needs no model: the model is loaded on the first encode.

Updates (:func:`update_index`) compare each file's content hash with the one stored beside its
records: unchanged files are not read again, changed ones are re-encoded and replace their old
records, new ones are added and, on request, vanished ones removed -- all in one commit.

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

import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from metaembed.budget import DEFAULT_SHORTLIST, Budget, BudgetLike, ladder_within, parse_ladder
from metaembed.errors import BudgetError, IndexStateError, InputError, MetaEmbedError
from metaembed.ingest import (
    ReadOptions, Record, Skipped, Splitter, file_of, iter_jsonl_records, read_file, scan_folder, token_windows,
)
from metaembed.model.builtin import DEFAULT_MODEL, PRETRAINED_DIR, is_builtin
from metaembed.model.items import ItemLike

if TYPE_CHECKING:  # imported lazily: torch and transformers are slow to import
    import torch

    from metaembed.index import MultiVectorIndex, Searcher, SearchResult
    from metaembed.model.query_encoder import ExportedQueryEncoder
    from metaembed.index.filters import FilterLike
    from metaembed.model import MetaEmbedModel

logger = logging.getLogger(__name__)

#: Keys this module writes into the index metadata.
MODEL_KEY = "model"
LADDER_KEY = "budgets"
SOURCE_KEY = "source"
#: Absolute paths beside the relative ones: used when only the index moved (the relative path then
#: points nowhere, the absolute one still does).
MODEL_PATH_KEY = "model_path"
SOURCE_PATH_KEY = "source_path"
QUERY_VECTORS_KEY = "num_query_tokens"
IMAGES_KEY = "supports_images"
#: The folder inside an index that holds its own copy of the model (``--copy-model``).
COPIED_MODEL_DIR = "model"
#: Consecutive passages of a long text share this fraction of their tokens.
PASSAGE_OVERLAP = 0.125


def load_model(path_or_name: "str | Path | MetaEmbedModel" = DEFAULT_MODEL) -> "MetaEmbedModel":
    """Load a saved MetaEmbed model folder or a built-in model by name, with a clear error otherwise."""
    from metaembed.model import MetaEmbedModel

    if isinstance(path_or_name, MetaEmbedModel):
        return path_or_name
    if is_builtin(str(path_or_name)) and not Path(path_or_name).exists():
        return MetaEmbedModel.from_pretrained(str(path_or_name))
    folder = Path(path_or_name)
    if not folder.is_dir():
        raise InputError(f"model folder not found: {folder}")
    return MetaEmbedModel.from_pretrained(folder)


def export_for_next_time(model: "MetaEmbedModel") -> None:
    """Export ``model``'s query encoder for later searches, if its kind has one; never fails the caller.

    A model without an exported query path is left alone; any other failure is a logged warning
    (the export only makes later searches faster).
    """
    from metaembed.errors import QueryExportError
    from metaembed.model.query_export import export_query_encoder

    try:
        export_query_encoder(model)
    except QueryExportError as error:
        logger.info("no exported query encoder for %s: %s", model.name_or_path, error)
    except (OSError, RuntimeError, ValueError) as error:  # a full disk, the exporter's own errors
        logger.warning("could not export the query encoder of %s: %s", model.name_or_path, error)


def relative_to_index(path: str | Path, index_folder: str | Path) -> str:
    """``path`` written relative to ``index_folder`` (POSIX), so that both can move together."""
    return Path(os.path.relpath(Path(path).resolve(), Path(index_folder).resolve())).as_posix()


def model_reference(model: str | Path, index_folder: str | Path) -> str:
    """How an index at ``index_folder`` records ``model``: a built-in name, or a path relative to the index."""
    text = str(model)
    if is_builtin(text) and not Path(text).exists():
        return text
    folder = Path(model).resolve()
    if folder.parent == PRETRAINED_DIR.resolve():
        return folder.name
    return relative_to_index(folder, index_folder)


def resolve_reference(recorded: str, index_folder: str | Path) -> str | Path:
    """The model (or folder) that ``recorded`` names, for an index at ``index_folder``.

    A built-in name stays a name; a relative path is read from the index folder; an absolute
    path (indexes built before paths were relative) is kept.
    """
    if is_builtin(recorded) and not (Path(index_folder) / recorded).exists():
        return recorded
    path = Path(recorded)
    return path if path.is_absolute() else Path(index_folder) / path


def recorded_location(metadata: dict[str, Any], key: str, absolute_key: str, index_folder: str | Path) -> str | Path | None:
    """Where ``metadata[key]`` points for the index at ``index_folder``: the relative path (or
    built-in name) when it exists, else the absolute path recorded beside it when that exists."""
    recorded = metadata.get(key)
    if not recorded:
        return None
    resolved = resolve_reference(str(recorded), index_folder)
    absolute = metadata.get(absolute_key)
    if isinstance(resolved, Path) and not resolved.exists() and absolute and Path(absolute).exists():
        return Path(absolute)
    return resolved


def index_metadata(
    model_path: str | Path | None,
    index_folder: str | Path,
    ladder: Sequence[Budget],
    num_query_tokens: int,
    supports_images: bool,
    source: str | Path | None = None,
    copied_model: bool = False,
) -> dict[str, Any]:
    """The metadata a new index (or sharded collection) at ``index_folder`` records (see the module docstring)."""
    metadata: dict[str, Any] = {
        MODEL_KEY: COPIED_MODEL_DIR if copied_model else (model_reference(model_path, index_folder) if model_path else ""),
        LADDER_KEY: [str(b) for b in ladder],
        QUERY_VECTORS_KEY: int(num_query_tokens),
        IMAGES_KEY: bool(supports_images),
    }
    if model_path and not copied_model and not is_builtin(metadata[MODEL_KEY]):
        metadata[MODEL_PATH_KEY] = str(Path(model_path).resolve())
    if source is not None and Path(source).is_dir():
        metadata[SOURCE_KEY] = relative_to_index(source, index_folder)
        metadata[SOURCE_PATH_KEY] = str(Path(source).resolve())
    return metadata


def open_index(path: str | Path) -> "MultiVectorIndex":
    """Open an existing index folder, with a clear error when there is none."""
    from metaembed.index import MultiVectorIndex

    folder = Path(path)
    if not folder.exists():
        raise IndexStateError(f"no index at {folder}: build one with 'metaembed index build'")
    return MultiVectorIndex.open(folder)


def passage_splitter(model: "MetaEmbedModel", overlap: float = PASSAGE_OVERLAP) -> Splitter:
    """A :data:`~metaembed.ingest.Splitter` cutting texts into windows of tokens that ``model`` encodes whole.

    The window is the model's content limit as a candidate (``max_length``, and what the
    backbone's positions leave beside the Meta Tokens) less the prompt template's own tokens;
    consecutive windows share ``overlap`` of their tokens so a sentence on a border is whole in one.
    """
    adapter = model.adapter
    limit = int(model.config.max_length)
    backbone_limit = adapter.max_content_tokens(model.num_appended("candidate"))
    if backbone_limit is not None:
        limit = min(limit, int(backbone_limit))
    template_tokens = len(adapter.encode(model.template.render("", 0, "candidate"), []).input_ids)
    # A few tokens of slack: a passage tokenised alone can take a token or two more at its edges.
    window = max(8, limit - template_tokens - 4)
    shared = int(window * overlap)
    tokenizer = model.tokenizer

    def split(text: str) -> list[tuple[int, int]]:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return token_windows([tuple(o) for o in offsets], len(text), window, shared)

    return split


class Retriever:
    """An index and its model, safe to search and update from several threads.

    ``index`` holds candidates as ``(num_vectors, dim)`` Meta Token embeddings; ``model`` encodes
    queries to ``(r_q, dim)`` and new candidates to ``(r_c, dim)``. A budget ``(r_q, r_c)`` keeps
    the first ``r_q`` query and ``r_c`` candidate vectors and scores them with MaxSim.

    ``model`` may be a loaded model or what :func:`load_model` accepts (a folder, a built-in
    name); then it is loaded on first use, so describing the index or checking a budget is fast.
    With ``exported_queries`` (what ``metaembed search`` uses) text queries are encoded by the
    model's exported query encoder (:mod:`metaembed.model.query_encoder`: the same rows, without
    importing transformers) when one is in the cache; otherwise the model is loaded and the
    export made for the next process.
    """

    def __init__(
        self, index: "MultiVectorIndex", model: "MetaEmbedModel | str | Path", *, exported_queries: bool = False
    ) -> None:
        self.index = index
        self._model: "MetaEmbedModel | None" = None
        self._model_source = model if isinstance(model, (str, Path)) else None
        # Text queries through the model's exported query encoder (no transformers import) while
        # the model itself is not loaded; None: not looked up yet, False: there is none.
        self._exported_queries = exported_queries and self._model_source is not None
        self._exported: "ExportedQueryEncoder | bool | None" = None
        self._export_attempted = False
        # The metadata describes the recorded model; an explicit other model is asked instead.
        self._recorded = False
        self._write_lock = threading.Lock()
        # Candidate encodes one at a time (bounded memory); query encodes never wait for them
        # (the model's Meta Token hook acts per thread).
        self._candidate_lock = threading.Lock()
        self._load_lock = threading.Lock()
        #: What the last :func:`build_index` / :func:`update_index` through this retriever did.
        self.last_update: UpdateReport | None = None
        if self._model_source is None:
            self._attach(model)  # type: ignore[arg-type]

    @classmethod
    def open(
        cls,
        index_path: str | Path,
        model: "MetaEmbedModel | str | Path | None" = None,
        *,
        exported_queries: bool = False,
    ) -> "Retriever":
        """Open the index at ``index_path`` with the model its metadata names (or ``model``).

        The model is loaded when first needed (an encode), not here; ``exported_queries`` as in
        the class docstring.
        """
        return cls.around(open_index(index_path), index_path, model, exported_queries=exported_queries)

    @classmethod
    def around(cls, index: "Searcher", location: str | Path,
               model: "MetaEmbedModel | str | Path | None" = None, *, exported_queries: bool = False) -> "Retriever":
        """A retriever on an open ``index`` (one index, or a sharded collection) kept at ``location``,
        with the model its metadata records (relative to ``location``), or ``model``."""
        if model is None:
            recorded = recorded_location(index.metadata, MODEL_KEY, MODEL_PATH_KEY, location)
            if not recorded:
                raise IndexStateError(
                    f"index {location} does not record its model; pass the model (--model) explicitly"
                )
            retriever = cls(index, recorded, exported_queries=exported_queries)
            retriever._recorded = True
            return retriever
        return cls(index, model, exported_queries=exported_queries)

    def _attach(self, model: "MetaEmbedModel") -> None:
        if model.embedding_dim != self._index_dim:
            raise IndexStateError(
                f"the model embeds into {model.embedding_dim} dimensions but the index holds "
                f"{self._index_dim}-dimensional vectors"
            )
        self._model = model

    @property
    def model(self) -> "MetaEmbedModel":
        """The model (loaded now if it was given by name or folder)."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    self._attach(load_model(self._model_source))  # type: ignore[arg-type]
        return self._model  # type: ignore[return-value]

    def _described(self, key: str) -> Any:
        """A fact about the model from the index metadata, when it describes this model; else ``None``."""
        if self._model is None and self._recorded:
            return self.index.metadata.get(key)
        return None

    # --- what is available -------------------------------------------------------------------
    @property
    def _index_dim(self) -> int:
        return int(self.index.dim)

    @property
    def max_r_q(self) -> int:
        """How many query vectors the model produces."""
        recorded = self._described(QUERY_VECTORS_KEY)
        return int(recorded) if recorded else int(self.model.num_query_tokens)

    @property
    def max_r_c(self) -> int:
        """How many candidate vectors the index stores per item."""
        return int(self.index.num_vectors)

    @property
    def supports_images(self) -> bool:
        """Whether the model encodes images (else images are read as text through OCR)."""
        recorded = self._described(IMAGES_KEY)
        return bool(recorded) if recorded is not None else bool(self.model.supports_images)

    @property
    def ladder(self) -> tuple[Budget, ...]:
        """The budgets recorded at build time that fit this model and index."""
        recorded = self.index.metadata.get(LADDER_KEY)
        ladder = parse_ladder(recorded) if recorded else ladder_within(None, self.max_r_q, self.max_r_c)
        return tuple(b for b in ladder if b.r_q <= self.max_r_q and b.r_c <= self.max_r_c)

    @property
    def source(self) -> Path | None:
        """The folder the index was built from (stored file paths are relative to it), if recorded."""
        if self.index.path is None:
            return None
        found = recorded_location(self.index.metadata, SOURCE_KEY, SOURCE_PATH_KEY, self.index.path)
        return None if found is None else Path(found)

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
        source = self.source
        return {
            "model": str(self._model_source if self._model_source is not None else self.model.name_or_path or ""),
            "source": str(source) if source is not None else None,
            "size": size,
            "shards": int(getattr(self.index, "num_shards", 1)),  # a sharded collection's, else 1
            "dim": self._index_dim,
            "dtype": self.index.dtype,
            "max_budget": f"{self.max_r_q},{self.max_r_c}",
            "budgets": [str(b) for b in self.ladder],
            "per_budget": per_budget,
            "supports_images": self.supports_images,
        }

    # --- search ------------------------------------------------------------------------------
    def search(
        self,
        query: "ItemLike | torch.Tensor",
        k: int = 10,
        budget: BudgetLike | None = None,
        mode: str = "exact",
        filter: "FilterLike | None" = None,
        shortlist: int = DEFAULT_SHORTLIST,
    ) -> list["SearchResult"]:
        """Search with one query (see :meth:`search_many`); return up to ``k`` hits, best first."""
        return self.search_many([query], k=k, budget=budget, mode=mode, filter=filter, shortlist=shortlist)[0]

    def search_many(
        self,
        queries: Sequence["ItemLike | torch.Tensor"],
        k: int = 10,
        budget: BudgetLike | None = None,
        mode: str = "exact",
        filter: "FilterLike | None" = None,
        shortlist: int = DEFAULT_SHORTLIST,
    ) -> list[list["SearchResult"]]:
        """Search a batch of queries; one list of hits per query, best first.

        Each query is an item to encode (text, image or both) or an already encoded query: a
        ``torch.Tensor`` ``(R_q, D)`` with ``R_q >= r_q``, as :meth:`encode_queries` or
        ``MetaEmbedModel.encode_queries`` return; the items are encoded together, in one call.
        ``filter`` keeps only candidates whose payload matches (``{"field": value}`` or
        ``{"field": {"in": [values]}}``, see :mod:`metaembed.index.filters`), before top-k.
        ``mode`` ``"coarse"`` or ``"ann"`` hands the exact re-rank a ``shortlist`` of candidates
        from a first stage (:meth:`~metaembed.index.Searcher.search`): fewer is faster, more is
        closer to exact search (at least ``k`` are kept).

        ``budget`` and ``filter`` are checked once, here; the ``(Q, r_q, D)`` queries go to the
        index's :meth:`~MultiVectorIndex.search_batch`.
        """
        import torch

        from metaembed.index.filters import PayloadFilter

        from metaembed.index.inputs import positive_int

        k = positive_int(k, "k")
        shortlist = positive_int(shortlist, "shortlist")
        chosen = self.check_budget(budget)
        payload_filter = None if filter is None else PayloadFilter.parse(filter)
        queries = list(queries)
        embeddings = torch.empty(len(queries), chosen.r_q, self._index_dim)
        to_encode = [i for i, query in enumerate(queries) if not isinstance(query, torch.Tensor)]
        for i, query in enumerate(queries):
            if isinstance(query, torch.Tensor):
                embeddings[i] = self._check_query_vectors(query, chosen, i)
        if to_encode:
            embeddings[to_encode] = self._encode_checked([queries[i] for i in to_encode], chosen)
        self.refresh()
        return self.index.search_batch(embeddings, k, chosen, mode, shortlist, filter=payload_filter)

    def encode_queries(self, queries: Sequence[ItemLike], budget: BudgetLike | None = None) -> "torch.Tensor":
        """Encode query items to fp32 ``(Q, r_q, D)`` at ``budget``'s ``r_q`` (``None``: the default budget)."""
        return self._encode_checked(queries, self.check_budget(budget))

    def _encode_checked(self, queries: Sequence[ItemLike], budget: Budget) -> "torch.Tensor":
        # the budget was checked against both the model and the index by the caller
        exported = self._exported_encoder(queries, budget)
        if exported is not None:
            import torch

            return torch.from_numpy(exported.encode(list(queries), budget.r_q))
        vectors = self.model.encode_queries(list(queries), budget=budget.r_q, show_progress_bar=False)
        if self._exported is False and not self._export_attempted:  # looked up, none there: make one
            self._export_attempted = True
            export_for_next_time(self.model)
        return vectors

    def _exported_encoder(self, queries: Sequence[ItemLike], budget: Budget) -> "ExportedQueryEncoder | None":
        """The exported query encoder for these queries, when it is to be used and can encode them."""
        if not self._exported_queries or self._model is not None or self._exported is False:
            return None
        from metaembed.model.items import to_items
        from metaembed.model.query_encoder import find_query_encoder

        if self._exported is None:
            found = find_query_encoder(self._model_source)  # type: ignore[arg-type]
            self._exported = found if found is not None and found.embedding_dim == self._index_dim else False
        exported = self._exported
        if exported is False:
            return None
        if budget.r_q > exported.num_query_tokens or not exported.can_encode(to_items(list(queries))):
            return None
        return exported

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
    def encode_candidates(self, items: Sequence[ItemLike], batch_size: int = 8) -> Any:
        """``(N, r_c, D)`` float32 candidate embeddings of ``items`` (one candidate encode at a time)."""
        with self._candidate_lock:
            return self.model.encode_candidates(list(items), batch_size=batch_size, show_progress_bar=False)

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

    def upsert_items(
        self,
        ids: Sequence[str],
        items: Sequence[ItemLike],
        payloads: Sequence[dict] | None = None,
        batch_size: int = 8,
    ) -> list[str]:
        """Encode ``items`` and store them under ``ids``, replacing the vectors and payload of ids
        already present, in one commit (:meth:`upsert` of their embeddings). Returns the ids that
        were replaced (the others are new)."""
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
        embeddings = self.encode_candidates(items, batch_size=batch_size)
        with self._write_lock:
            self.refresh()
            if not replace:
                self._check_new(ids)  # another writer may have added them meanwhile
            replaced = [i for i in ids if i in self.index]
            (self.index.upsert if replace else self.index.add)(list(ids), embeddings, payloads)
        return replaced

    def upsert(
        self, ids: Sequence[str], embeddings: Any, payloads: Sequence[dict] | None = None, delete: Sequence[str] = ()
    ) -> None:
        """Store encoded candidates, replacing ids already there, and remove ``delete``: one commit."""
        with self._write_lock:
            self.index.upsert(list(ids), embeddings, payloads, delete=list(delete))

    def _check_new(self, ids: Sequence[str]) -> None:
        present = [i for i in ids if i in self.index]
        if present:
            raise IndexStateError(f"ids already in the index: {present[:5]}" + (" ..." if len(present) > 5 else ""))

    def delete(self, ids: Sequence[str]) -> None:
        """Remove ``ids`` from the index; unknown ids raise :class:`IndexStateError`."""
        with self._write_lock:
            self.index.delete(list(ids))  # the index refreshes first: ids others added are known


# --- building and updating -------------------------------------------------------------------
@dataclass
class UpdateReport:
    """What an update did: ids ``added``, ``updated`` (re-encoded) and ``deleted``, records left
    ``unchanged``, inputs ``skipped`` (each with its reason) and ``notes`` said once up front."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``"312 indexed (5 added, 2 updated, 305 unchanged), 1 deleted, 3 skipped"``."""
        indexed = len(self.added) + len(self.updated) + self.unchanged
        line = f"{indexed} indexed ({len(self.added)} added, {len(self.updated)} updated, {self.unchanged} unchanged)"
        if self.deleted:
            line += f", {len(self.deleted)} deleted"
        if self.skipped:
            line += f", {len(self.skipped)} skipped"
        return line


@dataclass
class _Group:
    """The records of one source file (or JSONL row) in the index: their content hash and ids."""

    sha256: str | None
    ids: list[str] = field(default_factory=list)


_PASSAGE_SUFFIX = re.compile(r"[#&]passage=\d+$")


def _row_of(record_id: str) -> str:
    return _PASSAGE_SUFFIX.sub("", record_id)


def _indexed_groups(index: "MultiVectorIndex", folder: bool) -> dict[str, _Group]:
    """The index's records grouped by source file (``folder``) or by JSONL row."""
    groups: dict[str, _Group] = {}
    for item_id, payload in index.payloads(index.ids).items():
        payload = payload or {}
        if folder:
            path = payload.get("path")
            key = path if payload.get("sha256") and isinstance(path, str) else file_of(item_id)
        else:
            key = _row_of(item_id)
        group = groups.setdefault(key, _Group(payload.get("sha256")))
        if group.sha256 != payload.get("sha256"):
            group.sha256 = None  # records of mixed versions: treat the file as changed
        group.ids.append(item_id)
    return groups


def _pending(
    retriever: Retriever, source: Path, options: ReadOptions, report: UpdateReport, strict: bool
) -> tuple[list[tuple[str, list[Record]]], dict[str, _Group], set[str]]:
    """The (group, records) to encode, the index's groups, and the groups present in ``source``."""
    folder = source.is_dir()
    groups = _indexed_groups(retriever.index, folder)
    pending: list[tuple[str, list[Record]]] = []
    if folder:
        exclude = [retriever.index.path] if retriever.index.path is not None else []
        files, unsupported = scan_folder(source, exclude=exclude)
        if strict and unsupported:
            raise InputError(str(unsupported[0]))
        report.skipped.extend(unsupported)
        if not options.images:
            pictures = sum(f.kind != "text" for f in files)
            if pictures:
                report.notes.append(
                    f"the model reads text only: images and PDFs ({pictures} files) are read through "
                    "their text layer or OCR"
                )
        for file in files:
            sha = file.content_hash()
            known = groups.get(file.rel)
            if known is not None and known.sha256 == sha:
                report.unchanged += len(known.ids)
                continue
            try:
                pending.append((file.rel, read_file(file, options, sha)))
            except InputError as error:
                if strict:
                    raise InputError(f"{file.rel}: {error}") from None
                report.skipped.append(Skipped(file.rel, str(error)))
        return pending, groups, {f.rel for f in files}
    by_row: dict[str, list[Record]] = {}
    for record in iter_jsonl_records(source, options.split):
        by_row.setdefault(_row_of(record.id), []).append(record)
    for row, records in by_row.items():
        known = groups.get(row)
        if known is not None and known.sha256 == records[0].payload.get("sha256"):
            report.unchanged += len(known.ids)
            continue
        if not options.images and any(r.item().images for r in records):
            report.skipped.append(Skipped(row, "has an image, and the model reads text only"))
            continue
        pending.append((row, records))
    return pending, groups, set(by_row)


def _encoded_batches(
    retriever: Retriever, records: list[Record], batch_size: int, strict: bool, report: UpdateReport, progress: bool
) -> Iterator[tuple[list[Record], Any]]:
    """``(records, (n, r_c, D) embeddings)`` per batch; a record that fails to encode is skipped
    with its reason (``strict``: raises), the rest of its batch is kept."""
    from tqdm.auto import tqdm

    # None: a bar on a terminal only, so logs and pipes get the summary lines alone
    with tqdm(total=len(records), unit="item", disable=None if progress else True, desc="indexing") as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            try:
                yield batch, retriever.encode_candidates([r.item() for r in batch], batch_size=batch_size)
            except MetaEmbedError:
                if strict and len(batch) == 1:
                    raise
                good, vectors = [], []
                for record in batch:  # find the bad ones
                    try:
                        vectors.append(retriever.encode_candidates([record.item()]))
                        good.append(record)
                    except MetaEmbedError as error:
                        if strict:
                            raise InputError(f"{record.id}: {error}") from None
                        report.skipped.append(Skipped(record.id, str(error)))
                if good:
                    import torch

                    yield good, torch.cat(vectors)
            bar.update(len(batch))


def _upsert_held(retriever: Retriever, held: list[tuple[list[str], Any, list[dict]]]) -> None:
    """Commit the encoded batches in ``held`` as one write and empty it."""
    if held:
        import torch

        retriever.upsert([i for b in held for i in b[0]], torch.cat([b[1] for b in held]), [p for b in held for p in b[2]])
        held.clear()


def update_index(
    retriever: Retriever,
    source: str | Path,
    *,
    delete_missing: bool = False,
    strict: bool = False,
    atomic: bool = True,
    batch_size: int = 16,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> UpdateReport:
    """Bring the index up to date with ``source`` (a folder or a JSONL file).

    New files (rows) are added; files whose content hash changed are re-encoded and replace
    their records (a record of theirs that no longer exists, such as a page or passage past the
    new end, is removed); unchanged files are not read. With ``delete_missing``, records of
    files (rows) absent from ``source`` are removed. Unreadable or unsupported inputs are skipped
    with a reason each (``strict``: the first one raises :class:`InputError`, nothing written).

    ``atomic``: everything is written in one commit (encoded first into a temporary file);
    otherwise each batch is committed as it is encoded, so an interrupted run resumes where it
    stopped (what :func:`build_index` does), and removals are committed last.
    """
    import numpy as np

    source = Path(source)
    if not source.exists():
        raise InputError(f"input not found: {source}")
    if not source.is_dir() and source.suffix.lower() != ".jsonl":
        raise InputError(f"input {source} is neither a folder nor a .jsonl file")
    report = UpdateReport()
    model = retriever.model
    options = ReadOptions(images=bool(model.supports_images), split=passage_splitter(model))
    pending, groups, present = _pending(retriever, source, options, report, strict)
    records = [record for _, records in pending for record in records]
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise InputError(f"id {record.id!r} appears twice in the input")
        seen.add(record.id)
    written: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="metaembed-update-") as scratch:
        buffer = None
        ids: list[str] = []
        payloads: list[dict] = []
        done = 0
        held: list[tuple[list[str], Any, list[dict]]] = []
        for batch, vectors in _encoded_batches(retriever, records, batch_size, strict, report, progress):
            batch_ids = [r.id for r in batch]
            if atomic:
                if buffer is None:
                    shape = (len(records), vectors.shape[1], vectors.shape[2])
                    buffer = np.lib.format.open_memmap(Path(scratch) / "vectors.npy", "w+", np.float32, shape)
                buffer[len(ids) : len(ids) + len(batch)] = vectors.numpy()
                ids.extend(batch_ids)
                payloads.extend(r.payload for r in batch)
            else:
                held.append((batch_ids, vectors, [r.payload for r in batch]))
                # a codec that learns from the first add (pq*) gets a full training sample in it
                if sum(len(b[0]) for b in held) >= getattr(retriever.index, "training_items", 0):
                    _upsert_held(retriever, held)
            written.update(batch_ids)
            done += len(batch)
            if on_batch is not None:
                on_batch(done)
        _upsert_held(retriever, held)
        # A re-read file replaces all its old records (pages or passages past its new end go);
        # one whose every record failed keeps its old ones: nothing is lost to a bad edit.
        stale = [
            item_id
            for key, group_records in pending
            if key in groups and any(r.id in written for r in group_records)
            for item_id in groups[key].ids
            if item_id not in written
        ]
        if delete_missing:
            stale += [item_id for key, group in groups.items() if key not in present for item_id in group.ids]
        stale = [i for i in dict.fromkeys(stale) if i in retriever.index]
        if atomic and ids:
            retriever.upsert(ids, buffer[: len(ids)], payloads, stale)
        elif stale:
            retriever.delete(stale)
        del buffer
    existed = {item_id for group in groups.values() for item_id in group.ids}
    report.added = [i for i in written if i not in existed]
    report.updated = [i for i in written if i in existed]
    report.deleted = stale
    retriever.last_update = report
    return report


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
    copy_model: bool = False,
    strict: bool = False,
) -> "Retriever":
    """Embed every record of ``source`` (folder or JSONL) into the index at ``out``.

    ``model`` is a built-in name, a saved model folder or a loaded model; with a loaded model,
    ``model_path`` names where it was saved (recorded so that the index can be opened by path
    alone). ``copy_model`` stores a copy of the model inside the index (``out/model``), so the
    index is self-contained. Creates the index when ``out`` does not exist (recording the model,
    the folder and the ``budgets`` ladder -- by default the paper's ladder cut to what the model
    produces -- in its metadata) and otherwise *resumes*: files already indexed with the same
    content are skipped, so an interrupted build continues where it stopped; changed files are
    re-encoded. Each batch is written before the next is encoded. What was done (and skipped) is
    in the returned retriever's ``last_update``.
    """
    from metaembed.index import MultiVectorIndex

    source = Path(source)
    if not source.exists():  # a missing input fails before anything is created
        raise InputError(f"input not found: {source}")
    if not source.is_dir() and source.suffix.lower() != ".jsonl":
        raise InputError(f"input {source} is neither a folder nor a .jsonl file")
    out = Path(out)
    if isinstance(model, (str, Path)):
        model_path = model
    index = None
    if out.exists():
        index = open_index(out)
        recorded = index.metadata.get(MODEL_KEY)
        if model_path is not None and recorded and not _same_model(
            recorded_location(index.metadata, MODEL_KEY, MODEL_PATH_KEY, out) or recorded, model_path
        ):
            raise IndexStateError(
                f"index {out} was built with model {recorded}, not {model_path}; "
                "use a new --out or the same model"
            )
    loaded = load_model(model)
    created = index is None
    try:
        if index is None:
            ladder = ladder_within(budgets, loaded.num_query_tokens, loaded.num_candidate_tokens)
            metadata = index_metadata(
                model_path, out, ladder, loaded.num_query_tokens, loaded.supports_images, source, copied_model=copy_model
            )
            index = MultiVectorIndex.create(
                out, dim=loaded.embedding_dim, num_vectors=loaded.num_candidate_tokens, dtype=dtype, metadata=metadata
            )
            if copy_model:
                loaded.save_pretrained(out / COPIED_MODEL_DIR)
        retriever = Retriever(index, loaded)
        update_index(
            retriever, source, atomic=False, strict=strict, batch_size=batch_size, progress=progress, on_batch=on_batch
        )
    except BaseException:
        # A build that created the index and failed before its first batch was saved (a bad input
        # row, an interrupt) leaves no empty index behind; once items are saved, rerunning resumes.
        if created and index is not None and len(index) == 0:
            index.close()
            shutil.rmtree(out, ignore_errors=True)
        raise
    return retriever


def _same_model(recorded: str | Path, given: str | Path) -> bool:
    if isinstance(recorded, str) and is_builtin(recorded) or isinstance(given, str) and is_builtin(given):
        return str(recorded) == str(given)
    return Path(recorded).resolve() == Path(given).resolve()


__all__ = [
    "Retriever", "UpdateReport", "build_index", "export_for_next_time", "index_metadata", "recorded_location", "load_model", "model_reference", "open_index",
    "passage_splitter", "resolve_reference", "update_index",
]
