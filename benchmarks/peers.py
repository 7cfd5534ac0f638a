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
from typing import Any, Callable

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


def maxsim_cpu_scores(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """mixedbread's ``maxsim_cpu.maxsim_scores`` (Rust + libxsmm, its own OpenMP threads), one call per query:
    ``(Q, Rq, D) x (C, Rc, D) -> (Q, C)``."""
    import maxsim_cpu

    docs = np.ascontiguousarray(candidates.numpy(), dtype=np.float32)
    return torch.from_numpy(np.stack([maxsim_cpu.maxsim_scores(np.ascontiguousarray(query.numpy()), docs)
                                      for query in queries]))


def available() -> dict[str, bool]:
    """Which peers can be loaded here."""
    found = {}
    for name, package in (("colpali", "colpali_engine"), ("pylate", "pylate"), ("maxsim_cpu", "maxsim_cpu"),
                          ("qdrant_edge", "qdrant_edge"), ("qdrant_client", "qdrant_client"), ("lancedb", "lancedb")):
        found[name] = importlib.util.find_spec(package) is not None
    return found


__all__ = [
    "colpali_score_multi_vector",
    "pylate_colbert_scores",
    "maxsim_cpu_scores",
    "available",
    "PeerUnavailable",
]
