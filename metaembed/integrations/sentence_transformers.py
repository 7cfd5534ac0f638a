"""A MetaEmbed model as a sentence-transformers 6 ``MultiVectorEncoder``, budget included.

sentence-transformers builds a model from the modules listed in a folder's ``modules.json``;
:class:`MetaEmbedModule` is the one module a MetaEmbed model needs: it turns inputs into a
MetaEmbed batch (``preprocess``) and the batch into the side's Meta Token vectors
(``forward``), cut to the budget, as the ``token_embeddings`` a ``MultiVectorEncoder`` scores
with MaxSim. Every folder :meth:`MetaEmbedModel.save_pretrained` writes lists it, so::

    from sentence_transformers import MultiVectorEncoder

    encoder = MultiVectorEncoder("path/to/saved-metaembed-model", trust_remote_code=True)
    queries = encoder.encode_query(["a red square"], budget=4)          # r_q = 4 vectors each
    pages = encoder.encode_document(["caption one", "caption two"], budget=16)
    scores = encoder.similarity(queries, pages)                         # MaxSim at (4, 16)

``budget`` is an encode argument (``modules.json`` lists it in the module's ``kwargs``): an int
is ``r_q`` for queries and ``r_c`` for documents, ``"r_q,r_c"`` / a :class:`~metaembed.Budget`
is read for the side; without it the module's default budget (``None``: every vector) applies.
``prompt`` / ``prompt_name`` become the MetaEmbed instruction of each input.

``trust_remote_code=True`` is sentence-transformers' consent to import a module class from
outside its own package (here the installed ``metaembed``; nothing is read from the folder's
code). :func:`to_multi_vector_encoder` wraps a model already in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from sentence_transformers import MultiVectorEncoder
from sentence_transformers.base.modules import InputModule

from metaembed.budget import Budget
from metaembed.errors import InputError
from metaembed.model.modeling import MetaEmbedModel, Side
from metaembed.model.saving import SENTENCE_TRANSFORMERS_KWARGS

#: sentence-transformers' name of each side (its ``task``) -> MetaEmbed's
_SIDES: dict[str | None, Side] = {"query": "query", "document": "candidate", None: "candidate"}


def _side(task: str | None) -> Side:
    if task not in _SIDES:
        raise InputError(f"task must be 'query' or 'document', got {task!r}")
    return _SIDES[task]


class MetaEmbedModule(InputModule):
    """The sentence-transformers module of a MetaEmbed model: inputs -> ``(B, r, D)`` token embeddings.

    Args:
        model: the MetaEmbed model.
        budget: the default budget (``"r_q,r_c"``, a :class:`Budget`, or ``None`` for every
            vector) when an encode call gives none.
    """

    config_file_name = "metaembed_sentence_transformers.json"
    config_keys = ["budget"]
    forward_kwargs = set(SENTENCE_TRANSFORMERS_KWARGS)
    save_in_root = True

    def __init__(self, model: MetaEmbedModel, budget: str | Budget | None = None) -> None:
        super().__init__()
        if not isinstance(model, MetaEmbedModel):
            raise InputError(f"MetaEmbedModule wraps a MetaEmbedModel, got {type(model).__name__}")
        self.model = model
        self.budget = None if budget is None else str(Budget.parse(budget))
        for side in ("query", "candidate"):  # a default budget beyond the model fails here, not at encode
            model.resolve_budget(self.budget, side)

    @property
    def tokenizer(self) -> Any:  # sentence-transformers reads it (max length, special tokens)
        return self.model.tokenizer

    @property
    def modalities(self) -> list[Any]:
        return ["text", "image", ("image", "text")] if self.model.supports_images else ["text"]

    def get_embedding_dimension(self) -> int:
        """``D`` of every vector."""
        return self.model.embedding_dim

    def preprocess(
        self, inputs: Sequence[Any], prompt: str | None = None, task: str | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """A MetaEmbed batch of ``inputs`` (texts, images, ``{"text", "image"}`` dicts) for ``task``'s side.

        ``prompt`` is the instruction of inputs without their own; ``kwargs`` (the budget) act in :meth:`forward`.
        """
        return self.model.prepare(list(inputs), _side(task), instruction=prompt or None)

    def forward(
        self, features: dict[str, torch.Tensor], task: str | None = None, budget: Any = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """``token_embeddings`` ``(B, r, D)`` float32 unit rows and an all-ones ``attention_mask`` ``(B, r)``."""
        side = _side(task)
        keep = self.model.resolve_budget(self.budget if budget is None else budget, side)
        batch = {key: value for key, value in features.items() if isinstance(value, torch.Tensor)}
        vectors = self.model.forward(batch, side)[:, :keep]
        mask = torch.ones(vectors.shape[:2], dtype=torch.long, device=vectors.device)
        return {"token_embeddings": vectors, "attention_mask": mask}

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the MetaEmbed model folder (with its sentence-transformers files) and the default budget."""
        self.model.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> "MetaEmbedModule":
        """Load from a saved MetaEmbed folder (local, or a Hub repo that sentence-transformers downloads)."""
        folder = cls.load_dir_path(
            model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
            revision=revision, local_files_only=local_files_only,
        )
        config_path = Path(folder, cls.config_file_name)
        config = cls.load_config(folder) if config_path.is_file() else {}
        return cls(MetaEmbedModel.from_pretrained(folder), budget=config.get("budget"))


def to_multi_vector_encoder(model: MetaEmbedModel, budget: str | Budget | None = None) -> MultiVectorEncoder:
    """``model`` as a sentence-transformers ``MultiVectorEncoder`` (MaxSim), sharing its weights.

    ``budget`` is the default for encode calls that give none. ``encoder.save(path)`` writes
    a folder that both ``MultiVectorEncoder(path)`` and ``MetaEmbedModel.from_pretrained(path)`` load.
    """
    prompts = dict(model.config.prompts)
    encoder = MultiVectorEncoder(
        modules=[MetaEmbedModule(model, budget)], device=str(model.device), similarity_fn_name="maxsim",
        prompts=prompts or None,
    )
    # what modules.json records as the module's encode arguments, as when loaded from a folder
    encoder.module_kwargs = {name: list(SENTENCE_TRANSFORMERS_KWARGS) for name in encoder._modules}
    return encoder


__all__ = ["MetaEmbedModule", "to_multi_vector_encoder"]
