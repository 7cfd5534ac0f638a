"""What a user would pick instead of the built-in model, as encoders the evaluation sweep accepts.

* :class:`SentenceTransformerEncoder` — MiniLM-L6 used as sentence-transformers ships it: one
  mean-pooled, L2-normalised vector per text (``(N, 1, 384)``), computed by sentence-transformers
  itself (the reference);
* :class:`MeanPooledStates` — the same vectors from a one-way MetaEmbed model's forward pass
  (its input states are MiniLM's own), so an evaluation needs one encoder pass for both;
* :class:`TokenLevelStates` — token-level late interaction (ColBERT-style) over the same token
  states: every word piece a vector, the "hundreds of vectors" end of the trade-off.

All satisfy :class:`metaembed.evaluation.MultiVectorEncoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from metaembed.errors import InputError
from metaembed.model.items import to_items


def _texts(items: Sequence[Any], instruction: str | None) -> list[str]:
    texts = []
    for item in to_items(items, instruction=instruction):
        text = item.text or ""
        texts.append(f"{item.instruction} {text}" if item.instruction else text)
    return texts


class SentenceTransformerEncoder:
    """One mean-pooled vector per text from ``sentence_transformers.SentenceTransformer``."""

    num_query_tokens = 1
    num_candidate_tokens = 1

    def __init__(self, folder: str | Path | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        from metaembed.quickstart.recipe import minilm_folder

        self.folder = str(folder or minilm_folder())
        self.model = SentenceTransformer(self.folder, device="cpu")
        self.name_or_path = "sentence-transformers/all-MiniLM-L6-v2 (mean pooling)"
        self.config = {"baseline": "sentence-transformers mean pooling", "max_seq_length": self.model.max_seq_length}

    def _encode(self, items: Sequence[Any], batch_size: int, instruction: str | None, show_progress: bool | None) -> torch.Tensor:
        vectors = self.model.encode(_texts(items, instruction), batch_size=batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=bool(show_progress))
        return vectors.float().cpu().unsqueeze(1)

    def encode_queries(self, items: Sequence[Any], *, batch_size: int = 32, budget: Any = None,
                       instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor:
        """``(N, 1, 384)`` normalised mean-pooled vectors."""
        return self._encode(items, batch_size, instruction, show_progress)

    def encode_candidates(self, items: Sequence[Any], *, batch_size: int = 32, budget: Any = None,
                          instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor:
        """``(N, 1, 384)`` normalised mean-pooled vectors."""
        return self._encode(items, batch_size, instruction, show_progress)


class _StatesEncoder:
    """Shared plumbing: vectors from a one-way model's :meth:`~metaembed.model.MetaEmbedModel.token_states`."""

    def __init__(self, model: Any) -> None:
        if not getattr(model, "one_way", False):
            raise InputError("the baselines read a one-way MetaEmbed model's input states (meta_attention 'one_way')")
        self.model = model

    def _states(self, items: Sequence[Any], side: str, batch_size: int, instruction: str | None) -> list[torch.Tensor]:
        return self.model.token_states(to_items(items, instruction=instruction), side, batch_size=batch_size)


class MeanPooledStates(_StatesEncoder):
    """Baseline (a) from the same forward pass: the mean of MiniLM's token states, L2-normalised.

    With one-way attention the input's states are MiniLM's own, so this equals what
    sentence-transformers computes (:class:`SentenceTransformerEncoder`; a test checks it);
    sharing the model's state cache, it costs no second encoder pass.
    """

    num_query_tokens = 1
    num_candidate_tokens = 1

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.name_or_path = "MiniLM-L6 mean-pooled (sentence-transformers' all-MiniLM-L6-v2)"
        self.config = {"baseline": "mean pooling", "max_length": model.config.max_length}

    def _encode(self, items: Sequence[Any], side: str, batch_size: int, instruction: str | None) -> torch.Tensor:
        states = self._states(items, side, batch_size, instruction)
        return F.normalize(torch.stack([s.mean(dim=0) for s in states]), dim=-1).unsqueeze(1)

    def encode_queries(self, items: Sequence[Any], *, batch_size: int = 32, budget: Any = None,
                       instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor:
        """``(N, 1, H)``."""
        return self._encode(items, "query", batch_size, instruction)

    def encode_candidates(self, items: Sequence[Any], *, batch_size: int = 32, budget: Any = None,
                          instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor:
        """``(N, 1, H)``."""
        return self._encode(items, "candidate", batch_size, instruction)


class TokenLevelStates(_StatesEncoder):
    """Baseline (d): every token state a normalised vector (ColBERT-style late interaction).

    Rows are padded to ``query_vectors`` / ``candidate_vectors`` so that MaxSim stays exact:
    query rows with zeros (a zero row adds 0 to the sum), candidate rows with copies of the
    candidate's first vector (a copy never changes a maximum). Longer inputs keep their first rows.
    """

    def __init__(self, model: Any, query_vectors: int = 64, candidate_vectors: int = 256) -> None:
        super().__init__(model)
        self.num_query_tokens = query_vectors
        self.num_candidate_tokens = candidate_vectors
        self.name_or_path = "MiniLM-L6 token states (late interaction)"
        self.config = {"baseline": "token-level late interaction", "rows": [query_vectors, candidate_vectors],
                       "max_length": model.config.max_length}

    def _encode(self, items: Sequence[Any], side: str, batch_size: int, instruction: str | None) -> torch.Tensor:
        rows = self.num_query_tokens if side == "query" else self.num_candidate_tokens
        states = self._states(items, side, batch_size, instruction)
        output = torch.zeros(len(states), rows, states[0].shape[-1])
        for index, vectors in enumerate(states):
            vectors = F.normalize(vectors[:rows], dim=-1)
            output[index, : len(vectors)] = vectors
            if side == "candidate":
                output[index, len(vectors):] = vectors[0]
        return output

    def encode_queries(self, items: Sequence[Any], *, batch_size: int = 32, budget: Any = None,
                       instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor:
        """``(N, query_vectors, H)``: each token's normalised state, then zero rows."""
        return self._encode(items, "query", batch_size, instruction)

    def encode_candidates(self, items: Sequence[Any], *, batch_size: int = 32, budget: Any = None,
                          instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor:
        """``(N, candidate_vectors, H)``: each token's normalised state, then copies of the first."""
        return self._encode(items, "candidate", batch_size, instruction)


__all__ = ["SentenceTransformerEncoder", "MeanPooledStates", "TokenLevelStates"]
