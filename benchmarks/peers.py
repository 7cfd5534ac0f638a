"""The peers' own MaxSim scorers, loaded from their installed distributions by file path.

colpali-engine 0.3.18 and PyLate 1.6.0 cannot be imported as packages here:
their ``__init__`` modules pull in torchvision, old sentence-transformers and
model code this environment does not have (they are installed ``--no-deps``
from ``requirements-peers.txt``). Their scoring code needs only torch and numpy,
so we register empty parent packages whose ``__path__`` points at the installed
folders and import just the scoring modules; the packages' relative imports and
lazily imported backends then resolve to the real files.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np

import torch


class PeerUnavailable(ImportError):
    """A peer distribution is not installed (install requirements-peers.txt with --no-deps)."""


def _distribution_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PeerUnavailable(
            f"{package} is not installed; run `pip install --no-deps -r requirements-peers.txt`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _load_submodule(package: str, dotted: str, also_skip: tuple[str, ...] = ()) -> ModuleType:
    """Import ``package.dotted`` without executing the ``__init__`` of ``package``, of the
    packages on the way, or of the sibling packages named in ``also_skip``."""
    root = _distribution_folder(package)
    parts = dotted.split(".")
    folders = [tuple(parts[:depth]) for depth in range(len(parts))] + [tuple(p.split(".")) for p in also_skip]
    for folder in folders:
        name = ".".join([package, *folder])
        existing = sys.modules.get(name)
        if existing is not None and hasattr(existing, "__path__"):
            continue
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(root.joinpath(*folder))]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{package}.{dotted}")


@cache
def _colpali() -> Callable[..., torch.Tensor]:
    module = _load_submodule("colpali_engine", "utils.processing_utils")
    return module.BaseVisualRetrieverProcessor.score_multi_vector


@cache
def _pylate() -> Callable[..., torch.Tensor]:
    return _load_submodule("pylate", "scores.colbert", also_skip=("utils",)).colbert_scores


def colpali_score_multi_vector(queries: torch.Tensor, candidates: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """colpali-engine's ``BaseVisualRetrieverProcessor.score_multi_vector`` on CPU: ``(Q, Rq, D) x (C, Rc, D) -> (Q, C)``."""
    return _colpali()(queries, candidates, device="cpu", **kwargs)


def pylate_colbert_scores(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """PyLate's ``pylate.scores.colbert_scores`` (its torch path on CPU): ``(Q, Rq, D) x (C, Rc, D) -> (Q, C)``."""
    return _pylate()(queries, candidates)


class QdrantEdgeMaxSim:
    """Qdrant's embedded engine (``qdrant-edge-py``) with native MaxSim, one named multivector per ``r_c``.

    Qdrant stores a fixed set of vectors per point and cannot score a prefix, so
    serving a ladder of budgets needs one named vector ``c{r_c}`` per candidate
    budget (the first ``r_c`` vectors), each searched with the first ``r_q``
    query vectors. Plain (brute-force) index: a multivector HNSW took 970 s to
    build for 10k points and recalled 0.50 (research/offline.md section 5).
    """

    def __init__(self, path: str, dim: int, candidate_budgets: Sequence[int]) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.candidate_budgets = sorted(set(candidate_budgets))
        maxsim = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
        params = {
            f"c{r_c}": qe.EdgeVectorParams(dim, qe.Distance.Dot, multivector_config=maxsim)
            for r_c in self.candidate_budgets
        }
        self.shard = qe.EdgeShard.create(path, qe.EdgeConfig(vectors=params))

    def add(self, start_id: int, candidates: np.ndarray) -> None:
        """Upsert ``candidates`` ``(N, R_c, D)`` fp32 as points ``start_id ..`` (vectors travel as Python lists)."""
        qe = self._qe
        # Python float lists cost ~32 bytes a value: send about 4M values per request.
        batch = max(1, 4_000_000 // (sum(self.candidate_budgets) * candidates.shape[-1]))
        for offset in range(0, len(candidates), batch):
            block = candidates[offset : offset + batch]
            points = [
                qe.Point(start_id + offset + i, {f"c{r_c}": item[:r_c].tolist() for r_c in self.candidate_budgets})
                for i, item in enumerate(block)
            ]
            self.shard.update(qe.UpdateOperation.upsert_points(points))

    def search(self, queries: np.ndarray, r_q: int, r_c: int, k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` ``(point id, score)`` of each query ``(Q, R_q, D)`` at budget ``(r_q, r_c)``, one batch request."""
        qe = self._qe
        requests = [
            qe.QueryRequest(limit=k, query=qe.Query.Nearest(query[:r_q].tolist(), using=f"c{r_c}"))
            for query in queries
        ]
        found = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[(int(point.id), float(point.score)) for point in row] for row in found]

    def close(self) -> None:
        self.shard.close()


def available() -> dict[str, bool]:
    """Which peers can be loaded here."""
    found = {}
    for name, package in (("colpali", "colpali_engine"), ("pylate", "pylate"), ("qdrant_edge", "qdrant_edge")):
        found[name] = importlib.util.find_spec(package) is not None
    return found


__all__ = [
    "colpali_score_multi_vector",
    "pylate_colbert_scores",
    "QdrantEdgeMaxSim",
    "available",
    "PeerUnavailable",
]
