"""MTEB: a MetaEmbed model as an MTEB encoder and search backend, evaluated once per budget.

* :class:`MetaEmbedEncoder` is an MTEB ``AbsEncoder`` with MaxSim similarity: it embeds
  queries (``prompt_type`` query) with the query Meta Tokens cut to ``r_q`` and documents
  with the candidate Meta Tokens cut to ``r_c``, as ``(N, r, D)`` arrays;
* :class:`MetaEmbedSearchIndex` is MTEB's search backend protocol over a
  :class:`~metaembed.index.MultiVectorIndex`: documents go into a scratch index, queries are
  answered by its search (exact, or coarse-to-fine / ANN with ``mode``), re-ranking tasks are
  scored by MaxSim over their top-ranked documents;
* :func:`evaluate` runs ``mteb.evaluate`` once per budget of a ladder; each run's model
  metadata carries the budget in ``experiment_kwargs``, so MTEB's result cache keeps the runs
  apart. Embeddings are computed once (at every vector) and cut for each budget.

::

    import mteb
    from metaembed import MetaEmbedModel
    from metaembed.integrations.mteb import evaluate

    model = MetaEmbedModel.from_pretrained("path/to/model")
    results = evaluate(model, mteb.get_tasks(tasks=["Vidore2ESGReportsRetrieval"]), "1,1 4,8 16,64")
    for budget, result in results.items():
        print(budget, result.task_results[0].get_score())
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import mteb
import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.models.search_wrappers import SearchEncoderWrapper
from mteb.types import PromptType

from metaembed.budget import DEFAULT_SHORTLIST, Budget, BudgetLike, parse_ladder
from metaembed.errors import InputError
from metaembed.index import MultiVectorIndex, search_modes
from metaembed.model.modeling import MetaEmbedModel, Side
from metaembed.scoring import maxsim

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.data import DataLoader


def _side(prompt_type: PromptType | str | None) -> Side:
    value = getattr(prompt_type, "value", prompt_type)
    return "query" if value == "query" else "candidate"


class MetaEmbedEncoder(AbsEncoder):
    """An MTEB encoder: MetaEmbed embeddings at ``budget`` scored by MaxSim.

    Args:
        model: the MetaEmbed model.
        budget: ``(r_q, r_c)``; ``None`` keeps every vector.
        name: the model name MTEB reports (default ``metaembed/<folder name>``).
        instructions: ``{"query": ..., "document": ...}`` MetaEmbed instructions per side.
        embeddings: a dict shared between encoders of the same model (see :func:`evaluate`),
            where full-size embeddings are kept and reused by the other budgets.
    """

    def __init__(
        self,
        model: MetaEmbedModel,
        budget: BudgetLike | None = None,
        *,
        name: str | None = None,
        instructions: dict[str, str] | None = None,
        embeddings: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.budget = Budget.parse(budget) if budget is not None else Budget(model.num_query_tokens, model.num_candidate_tokens)
        for side in ("query", "candidate"):  # a budget beyond the model fails here, not in the middle of a run
            model.resolve_budget(self.budget, side)
        self.instructions = dict(instructions or {})
        unknown = set(self.instructions) - {"query", "document"}
        if unknown:
            raise InputError(f"instructions are given per side, 'query' and 'document'; got {sorted(unknown)}")
        self.embeddings = {} if embeddings is None else embeddings
        label = name or f"metaembed/{Path(model.name_or_path or 'model').name}"
        self.mteb_model_meta = ModelMeta.create_empty(overwrites=dict(
            name=label,
            revision="local",
            loader=None,
            embed_dim=model.embedding_dim,
            similarity_fn_name=ScoringFunction.MAX_SIM,
            model_type=["late-interaction"],
            modalities=["text", "image"] if model.supports_images else ["text"],
            framework=["PyTorch"],
            n_parameters=sum(p.numel() for p in model.parameters()),
            experiment_kwargs={"budget": str(self.budget)},
            use_instructions=bool(self.instructions),
        ))

    def encode(
        self,
        inputs: "DataLoader[Any]",
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """``(N, r_q, D)`` for queries, ``(N, r_c, D)`` for documents, float32 unit rows."""
        side = _side(prompt_type)
        items = [item for batch in inputs for item in _batch_items(batch)]
        key = _content_key(task_metadata.name, hf_subset, hf_split, side, items)
        if key not in self.embeddings:
            encode = self.model.encode_queries if side == "query" else self.model.encode_candidates
            self.embeddings[key] = encode(
                items, batch_size=int(kwargs.get("batch_size") or 8), prompt=self.instructions.get(
                    "query" if side == "query" else "document"),
                show_progress_bar=kwargs.get("show_progress_bar"),
            )
        keep = self.budget.r_q if side == "query" else self.budget.r_c
        return self.embeddings[key][:, :keep].numpy()

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """MaxSim ``(Q, C)`` of every vector given (the encoder already cut them to the budget)."""
        return maxsim(_as_3d(embeddings1), _as_3d(embeddings2))

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """MaxSim of each query with its paired document: ``(N,)``."""
        queries, documents = _as_3d(embeddings1), _as_3d(embeddings2)
        return torch.einsum("nid,njd->nij", queries, documents).max(dim=-1).values.sum(dim=-1)


def _as_3d(values: Any) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values).float()
    return tensor[None] if tensor.ndim == 2 else tensor


def _batch_items(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """MTEB's batch of columns -> MetaEmbed items (text and/or one image each)."""
    texts, images = batch.get("text"), batch.get("image")
    size = len(texts if texts is not None else images or [])
    items = []
    for i in range(size):
        item: dict[str, Any] = {}
        if texts is not None and texts[i]:
            item["text"] = texts[i]
        if images is not None and images[i] is not None:
            item["image"] = images[i]
        items.append(item)
    return items


def _content_key(task: str, subset: str, split: str, side: str, items: Sequence[dict[str, Any]]) -> str:
    """Names a set of inputs: the task, split and side, and a digest of the texts and image sizes."""
    digest = hashlib.sha1()
    for item in items:
        digest.update(str(item.get("text", "")).encode())
        image = item.get("image")
        digest.update(repr(getattr(image, "size", image)).encode() + b"\0")
    return f"{task}/{subset}/{split}/{side}/{len(items)}/{digest.hexdigest()}"


class MetaEmbedSearchIndex:
    """MTEB's search backend (``IndexEncoderSearchProtocol``) over a scratch :class:`MultiVectorIndex`.

    ``mode`` / ``shortlist`` are :meth:`MultiVectorIndex.search`'s (``"exact"`` by default;
    ``"coarse"`` and ``"ann"`` shortlist at ``first_stage_budget`` and re-rank exactly).
    """

    def __init__(self, mode: str = "exact", shortlist: int = DEFAULT_SHORTLIST, first_stage_budget: BudgetLike = (1, 1)) -> None:
        if mode not in search_modes():
            raise InputError(f"unknown search mode {mode!r}; expected one of {search_modes()}")
        self.mode, self.shortlist, self.first_stage_budget = mode, shortlist, first_stage_budget
        self.index: MultiVectorIndex | None = None
        self.ids: list[str] = []

    def add_documents(self, embeddings: Any, idxs: list[str]) -> None:
        """Store the documents' ``(N, r_c, D)`` embeddings under their ids."""
        vectors = _as_3d(embeddings)
        if self.index is None:
            self.index = MultiVectorIndex.create(None, dim=vectors.shape[2], num_vectors=vectors.shape[1], dtype="float32")
        self.index.add([str(i) for i in idxs], vectors)
        self.ids.extend(str(i) for i in idxs)

    def search(
        self,
        embeddings: Any,
        top_k: int,
        similarity_fn: Callable[[Any, Any], Any],
        top_ranked: dict[str, list[str]] | None = None,
        query_idx_to_id: dict[int, str] | None = None,
    ) -> tuple[list[list[float]], list[list[int]]]:
        """Per query: the top-``k`` MaxSim scores and the positions of their documents (as added).

        With ``top_ranked`` (re-ranking tasks) the positions are within each query's ranked list.
        """
        if self.index is None:
            raise InputError("no documents indexed: add_documents() comes before search()")
        queries = _as_3d(embeddings)
        if top_ranked is not None:
            if query_idx_to_id is None:
                raise InputError("re-ranking needs query_idx_to_id")
            return self._rerank(queries, top_k, top_ranked, query_idx_to_id)
        position = {item_id: i for i, item_id in enumerate(self.ids)}
        hits = self.index.search(queries, k=top_k, mode=self.mode, shortlist=max(self.shortlist, top_k),
                                 first_stage_budget=self.first_stage_budget)
        return [[h.score for h in row] for row in hits], [[position[h.id] for h in row] for row in hits]

    def _rerank(
        self, queries: torch.Tensor, top_k: int, top_ranked: dict[str, list[str]], query_idx_to_id: dict[int, str]
    ) -> tuple[list[list[float]], list[list[int]]]:
        all_scores, all_positions = [], []
        for number, query in enumerate(queries):
            ranked = top_ranked.get(query_idx_to_id[number]) or []
            if not ranked:
                all_scores.append([])
                all_positions.append([])
                continue
            scores = maxsim(query[None], self.index.vectors(ranked))[0]
            top = scores.topk(min(top_k, len(ranked)))
            all_scores.append(top.values.tolist())
            all_positions.append(top.indices.tolist())
        return all_scores, all_positions

    def clear(self) -> None:
        """Drop the documents (MTEB calls this after each split)."""
        if self.index is not None:
            self.index.close()
        self.index, self.ids = None, []


def search_model(
    model: MetaEmbedModel,
    budget: BudgetLike | None = None,
    *,
    mode: str = "exact",
    name: str | None = None,
    instructions: dict[str, str] | None = None,
    embeddings: dict[str, torch.Tensor] | None = None,
) -> SearchEncoderWrapper:
    """What ``mteb.evaluate`` runs for one budget: :class:`MetaEmbedEncoder` searched through our index."""
    encoder = MetaEmbedEncoder(model, budget, name=name, instructions=instructions, embeddings=embeddings)
    return SearchEncoderWrapper(encoder, index_backend=MetaEmbedSearchIndex(mode))


def evaluate(
    model: MetaEmbedModel,
    tasks: Any,
    budgets: str | Iterable[BudgetLike] | None = None,
    *,
    mode: str = "exact",
    name: str | None = None,
    instructions: dict[str, str] | None = None,
    **evaluate_kwargs: Any,
) -> dict[Budget, Any]:
    """``mteb.evaluate`` of ``tasks`` once per budget of ``budgets``: ``{budget: ModelResult}``.

    ``budgets`` is a ladder (default: the paper's, cut to what the model produces).
    ``evaluate_kwargs`` go to ``mteb.evaluate`` (``cache``, ``encode_kwargs``, ``overwrite_strategy``, ...).
    """
    ladder = parse_ladder(budgets) if isinstance(budgets, str) or budgets is None else [Budget.parse(b) for b in budgets]
    if budgets is None:
        ladder = [b for b in ladder if b.r_q <= model.num_query_tokens and b.r_c <= model.num_candidate_tokens]
    shared: dict[str, torch.Tensor] = {}
    results = {}
    for budget in ladder:
        runner = search_model(model, budget, mode=mode, name=name, instructions=instructions, embeddings=shared)
        results[budget] = mteb.evaluate(runner, tasks, **evaluate_kwargs)
    return results


__all__ = ["MetaEmbedEncoder", "MetaEmbedSearchIndex", "evaluate", "search_model"]
