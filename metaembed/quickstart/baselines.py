"""What a user would pick instead of the built-in model, as encoders the evaluation sweep accepts.

* :class:`SentenceTransformerEncoder` — MiniLM-L6 used as sentence-transformers ships it: one
  mean-pooled, L2-normalised vector per text (``(N, 1, 384)``), computed by sentence-transformers
  itself;
* :class:`TokenLevelEncoder` — token-level late interaction (ColBERT-style) over the same
  encoder's own token states: every word piece a normalised vector, the "hundreds of vectors" end
  of the trade-off. Rows are padded to a fixed count so that MaxSim stays exact: query rows with
  zeros (a zero row adds 0 to the sum), candidate rows with copies of the candidate's first
  vector (a copy never changes a maximum).

Both take the model folder (default: the wheel's MiniLM) and satisfy
:class:`metaembed.evaluation.MultiVectorEncoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

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


class TokenLevelEncoder(SentenceTransformerEncoder):
    """Every token state a vector (ColBERT-style), padded to ``query_vectors`` / ``candidate_vectors`` rows."""

    def __init__(self, folder: str | Path | None = None, query_vectors: int = 64, candidate_vectors: int = 256) -> None:
        super().__init__(folder)
        self.num_query_tokens = query_vectors
        self.num_candidate_tokens = candidate_vectors
        self.name_or_path = "MiniLM-L6 token states (late interaction)"
        self.config = {"baseline": "token-level late interaction", "rows": [query_vectors, candidate_vectors],
                       "max_seq_length": self.model.max_seq_length}
        #: real (unpadded) vectors of every candidate encoded so far, for index-size accounting
        self.candidate_lengths: list[int] = []

    def _tokens(self, items: Sequence[Any], batch_size: int, instruction: str | None, rows: int, repeat: bool) -> tuple[torch.Tensor, list[int]]:
        states = self.model.encode(_texts(items, instruction), batch_size=batch_size, output_value="token_embeddings")
        output = torch.zeros(len(states), rows, states[0].shape[-1])
        lengths = []
        for index, vectors in enumerate(states):
            vectors = F.normalize(vectors.float().cpu()[:rows], dim=-1)
            output[index, : len(vectors)] = vectors
            if repeat:
                output[index, len(vectors):] = vectors[0]
            lengths.append(len(vectors))
        return output, lengths

    def encode_queries(self, items: Sequence[Any], *, batch_size: int = 32, budget: Any = None,
                       instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor:
        """``(N, query_vectors, 384)``: each word piece's normalised state, then zero rows."""
        return self._tokens(items, batch_size, instruction, self.num_query_tokens, repeat=False)[0]

    def encode_candidates(self, items: Sequence[Any], *, batch_size: int = 32, budget: Any = None,
                          instruction: str | None = None, show_progress: bool | None = None) -> torch.Tensor:
        """``(N, candidate_vectors, 384)``: each word piece's normalised state, then copies of the first."""
        output, lengths = self._tokens(items, batch_size, instruction, self.num_candidate_tokens, repeat=True)
        self.candidate_lengths.extend(lengths)
        return output


__all__ = ["SentenceTransformerEncoder", "TokenLevelEncoder"]
