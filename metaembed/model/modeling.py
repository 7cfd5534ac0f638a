"""``MetaEmbedModel``: a backbone plus the Meta Token table, the encode API and save/load.

Shapes: a query is embedded as ``(R_q, D)`` and a candidate as ``(R_c, D)``
(``R_q = 16``, ``R_c = 64`` by default; ``D`` = projection size or the
backbone's hidden size). Rows are L2-normalised and nested: the first ``r`` rows
are the embedding at budget ``r``, so a budget is a prefix length.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, PretrainedConfig

from metaembed.budget import Budget
from metaembed.errors import BudgetError, InputError
from metaembed.model import builtin, encode_options, pooling, saving
from metaembed.model.backbones import BackboneAdapter, detect_family, get_adapter
from metaembed.model.config import MetaEmbedConfig
from metaembed.model.convert_official import convert_official, is_official_checkpoint
from metaembed.model.items import Item, ItemLike, to_items
from metaembed.model.lora import LoraMixin
from metaembed.model.meta_tokens import MetaTokens, last_valid_mask
from metaembed.model.processing import build_batch
from metaembed.model.templates import SIDES
from metaembed.scoring import maxsim

Side = Literal["query", "candidate"]
logger = logging.getLogger(__name__)
# "name" or "org/name" (what the Hub accepts); anything else that does not exist is a missing folder
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise InputError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
    return resolved


_PROGRESS_LABELS = {"query": "encoding queries", "candidate": "encoding candidates"}


def _size_hint(item: Item) -> tuple[int, int]:
    """Cheap sort key for batching: images first (they dominate length), then text length."""
    return (len(item.images), len(item.text or ""))


class MetaEmbedModel(LoraMixin, nn.Module):
    """MetaEmbed: learnable Meta Tokens appended to a Hugging Face backbone.

    Build one with :meth:`from_config`, :meth:`from_pretrained` or
    :func:`metaembed.model.testing.tiny_model`. Encode with
    :meth:`encode_queries` / :meth:`encode_candidates` (float32 CPU tensors
    ``(N, R, D)``); train with :meth:`prepare` + :meth:`forward`.
    """

    config: MetaEmbedConfig

    def __init__(self, config: MetaEmbedConfig, backbone: nn.Module, tokenizer: Any, image_processor: Any = None):
        super().__init__()
        if config.family is None:
            config.family = detect_family(backbone.config.model_type)
        adapter_class = get_adapter(config.family)
        self.config = config
        self.backbone = backbone
        self.adapter: BackboneAdapter = adapter_class(backbone, tokenizer, image_processor, config)
        self.template = config.template or adapter_class.default_template
        hidden = self.adapter.hidden_size
        self.meta_tokens = (
            MetaTokens(
                config.num_query_tokens,
                config.num_candidate_tokens,
                hidden,
                shared=config.shared_meta_tokens,
                init_std=config.initializer_range,
            )
            if config.pooling == "meta_tokens"
            else None
        )
        if self.meta_tokens is not None and config.meta_token_init == "mean_embedding":
            center = self.adapter.input_embeddings().weight.float().mean(dim=0)
            self.meta_tokens.init_around(center, config.initializer_range)
        if self.one_way and not adapter_class.supports_one_way:
            raise InputError(
                f"meta_attention 'one_way' is not implemented for the {config.family!r} backbone; "
                "use 'bidirectional'"
            )
        self.projection = nn.Linear(hidden, config.projection_dim) if config.projection_dim else None
        self.peft_model: Any = None  # set by LoraMixin's methods; not a submodule (it wraps self.backbone)
        #: Where :meth:`from_pretrained` loaded the model from (folder or Hub id); ``None`` for a
        #: model built in memory. Evaluation reports and caches name the model by it.
        self.name_or_path: str | None = None

    # ------------------------------------------------------------- properties
    @property
    def one_way(self) -> bool:
        """Whether a bidirectional backbone runs with one-way Meta Token attention (see the config)."""
        return self.config.meta_attention == "one_way" and not self.adapter.causal

    @property
    def num_query_tokens(self) -> int:
        """Vectors per query (1 for single-vector pooling)."""
        return 1 if self.config.pooling in ("last_token", "mean") else self.config.num_query_tokens

    @property
    def num_candidate_tokens(self) -> int:
        """Vectors per candidate (1 for single-vector pooling)."""
        return 1 if self.config.pooling in ("last_token", "mean") else self.config.num_candidate_tokens

    @property
    def embedding_dim(self) -> int:
        """``D``: the projection size, or the backbone's hidden size without projection."""
        return self.config.projection_dim or self.adapter.hidden_size

    @property
    def device(self) -> torch.device:
        """Where the backbone's parameters live."""
        return next(self.backbone.parameters()).device

    @property
    def supports_images(self) -> bool:
        """Whether items may carry images."""
        return self.adapter.supports_images

    @property
    def tokenizer(self) -> Any:
        """The backbone's tokenizer."""
        return self.adapter.tokenizer

    def num_appended(self, side: Side) -> int:
        """Meta Token slots after an input of ``side`` (0 for the baseline poolings).

        All ``R_q + R_c`` rows, except a query on a causal backbone, which stops
        after its ``R_q`` rows (the later rows cannot change them).
        """
        if self.meta_tokens is None:
            return 0
        return self.meta_tokens.num_appended(side, causal=self.adapter.causal, one_way=self.one_way)

    def num_vectors(self, side: Side) -> int:
        """``R`` for ``side``."""
        return self.num_query_tokens if side == "query" else self.num_candidate_tokens

    # --------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: MetaEmbedConfig) -> "MetaEmbedModel":
        """Build the backbone (id, folder or config object) and its processors; fresh Meta Tokens."""
        from metaembed.model import builtin

        source = config.backbone
        if builtin.is_package_reference(source):
            source = builtin.package_model_path(source)
        processor = config.processor
        if builtin.is_package_reference(processor):
            processor = builtin.package_model_path(processor)
        family = config.family
        if family is None:
            is_object = isinstance(source, PretrainedConfig)
            model_type = source.model_type if is_object else AutoConfig.from_pretrained(source).model_type
            family = config.family = detect_family(model_type)
        adapter_class = get_adapter(family)
        processor_source = processor or (source if isinstance(source, str) else None)
        if processor_source is None:
            raise InputError("a backbone given as a config object needs config.processor (a tokenizer folder or id)")
        backbone = adapter_class.load_backbone(source, _resolve_dtype(config.torch_dtype))
        tokenizer = adapter_class.load_tokenizer(processor_source)
        image_processor = (
            adapter_class.load_image_processor(processor_source, config) if adapter_class.supports_images else None
        )
        return cls(config, backbone, tokenizer, image_processor)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> "MetaEmbedModel":
        """Load a saved MetaEmbed model, an official-code checkpoint, or wrap a plain backbone.

        * a folder written by :meth:`save_pretrained`: exact round trip (LoRA included);
        * a folder in the official MetaEmbed layout (``prompt_embed_tokens``; see
          :mod:`metaembed.model.convert_official`): converted;
        * a Hugging Face Hub id of a model saved by :meth:`save_pretrained`: downloaded, then as above;
        * any other Hugging Face id or folder: a new model with fresh Meta Tokens.

        ``dtype`` is the backbone's compute dtype (Meta Tokens and projection stay float32).
        """
        dtype = _resolve_dtype(dtype)
        name_or_path = str(path_or_id)
        if builtin.is_builtin(path_or_id) and not Path(path_or_id).exists():
            path_or_id = builtin.builtin_path(str(path_or_id))
        if not Path(path_or_id).exists():
            if not _HUB_ID.fullmatch(str(path_or_id)):
                raise InputError(f"no such model folder: {path_or_id}")
            # a Hub id: a MetaEmbed model there is downloaded as a folder
            path_or_id = saving.hub_folder(str(path_or_id)) or path_or_id
        if saving.is_saved_model(path_or_id):
            model = cls.from_config(saving.load_config(path_or_id, dtype))
            saving.load_own_weights(model, saving.read_own_weights(path_or_id))
            adapter = saving.adapter_folder(path_or_id)
            if adapter is not None:
                model.load_lora(adapter)
        elif is_official_checkpoint(path_or_id):
            model = cls.from_official(path_or_id, dtype=dtype)
        elif Path(path_or_id).is_dir() and not Path(path_or_id, "config.json").is_file():
            raise InputError(
                f"{path_or_id} is neither a saved MetaEmbed model (no metaembed_config.json) "
                "nor a Hugging Face model folder (no config.json)"
            )
        else:
            dtype_name = str(dtype).removeprefix("torch.") if dtype else None
            config = MetaEmbedConfig(backbone=str(path_or_id), torch_dtype=dtype_name)
            model = cls.from_config(config)
            logger.warning(
                "%s is a plain backbone: its Meta Tokens are freshly initialised and need training", path_or_id
            )
        model.name_or_path = name_or_path
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def from_official(cls, path: str | Path, **options: Any) -> "MetaEmbedModel":
        """Convert a checkpoint of the official MetaEmbed code (PEFT adapter or full folder).

        ``options``: ``base``, ``num_query_tokens`` (16), ``num_candidate_tokens`` (64),
        ``processor``, ``dtype``, ``max_visual_tokens`` (1024); see
        :func:`metaembed.model.convert_official.convert_official`.
        """
        converted = convert_official(path, **options)
        model = cls.from_config(converted.config)
        saving.load_own_weights(model, converted.own_weights)
        if converted.lora_config is not None:
            model.load_lora_weights(converted.lora_config, converted.lora_weights)
        return model.eval()

    def save_pretrained(self, path: str | Path, *, with_backbone: bool = True) -> None:
        """Write config JSON, Meta Tokens/projection safetensors, backbone, processors and any LoRA adapter.

        ``with_backbone=False`` writes no backbone and processor copies: the config keeps naming
        them (a ``"package:<module>"`` reference or a Hub id), so the folder holds only what
        training changed (how the built-in models ship).
        """
        saving.save(self, path, with_backbone=with_backbone)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute backbone activations during backward (non-reentrant, as the official training).

        Trades compute for memory in training; the Meta Token table still gets
        its gradient because its rows enter through the embedding output.
        """
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---------------------------------------------------------------- batches
    def prepare(
        self,
        items: Sequence[ItemLike] | ItemLike,
        side: Side,
        instruction: str | None = None,
        *,
        padding_side: Literal["left", "right"] = "left",
    ) -> dict[str, torch.Tensor]:
        """A model-ready CPU batch for ``items`` (what the training collator calls).

        Keys: ``input_ids``/``attention_mask`` ``(B, L)`` long (content, then the
        Meta Token slots), plus the backbone's image tensors when any item has
        images. ``instruction`` applies to items without their own.
        """
        self._check_side(side)
        return self._build(to_items(items, instruction=instruction), side, padding_side=padding_side)

    def _build(
        self,
        items: Sequence[Item],
        side: Side,
        *,
        padding_side: str = "left",
        item_numbers: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        return build_batch(
            self.adapter,
            self.template,
            items,
            side,
            num_meta_tokens=self.num_appended(side),
            max_length=self.config.max_length,
            padding_side=padding_side,
            item_numbers=item_numbers,
        )

    def forward(self, batch: Mapping[str, torch.Tensor], side: Side) -> torch.Tensor:
        """Embed a prepared batch: ``(B, R_side, D)`` float32, L2-normalised rows, differentiable."""
        self._check_side(side)
        device = self.device
        batch = {key: value.to(device) for key, value in batch.items()}
        attention_mask = batch["attention_mask"]
        hidden, slots = self._hidden_states(batch, side)
        if self.meta_tokens is not None:
            rows = self.meta_tokens.appended_rows(side, causal=self.adapter.causal, one_way=self.one_way)
            meta_states = hidden[slots].view(hidden.shape[0], rows.stop - rows.start, hidden.shape[-1])
            vectors = self.meta_tokens.read_out(meta_states, side, rows)
        else:
            if self.config.pooling == "last_token":
                vectors = pooling.last_token(hidden, attention_mask)
            elif self.config.pooling == "mean":
                vectors = pooling.masked_mean(hidden, attention_mask)
            else:
                vectors = pooling.chunk_means(hidden, attention_mask, self.num_vectors(side))
        vectors = vectors.float()
        if self.projection is not None:
            vectors = self.projection(vectors.to(self.projection.weight.dtype)).float()
        return F.normalize(vectors, p=2, dim=-1)

    def _hidden_states(self, batch: dict[str, torch.Tensor], side: Side) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last hidden states ``(B, L, H)`` of a batch on the model's device, and the Meta Token slots ``(B, L)``."""
        if self.meta_tokens is None:
            return self.adapter.run(batch), None
        rows = self.meta_tokens.appended_rows(side, causal=self.adapter.causal, one_way=self.one_way)
        slots = last_valid_mask(batch["attention_mask"], rows.stop - rows.start)
        if self.one_way:
            batch["meta_slots"] = slots
        with self.meta_tokens.injected(self.adapter.input_embeddings(), slots, rows):
            return self.adapter.run(batch), slots

    def token_states(
        self, items: Sequence[ItemLike] | ItemLike, side: Side = "candidate", *, batch_size: int = 8
    ) -> list[torch.Tensor]:
        """The backbone's last-layer states of each item's own tokens: float32 CPU ``(L_i, H)`` each.

        Every token of the formatted input (special tokens included), without the Meta Tokens.
        With one-way Meta Token attention these are exactly the pretrained encoder's states, so
        their mean is the plain encoder's mean-pooled embedding and the rows themselves are
        token-level (ColBERT-style) vectors, from the same forward pass as the Meta Tokens.
        """
        self._check_side(side)
        normalised = to_items(items)
        states: list[torch.Tensor] = []
        with self.evaluating(), torch.inference_mode():
            for start in range(0, len(normalised), batch_size):
                batch = self._build(normalised[start : start + batch_size], side)
                batch = {key: value.to(self.device) for key, value in batch.items()}
                hidden, slots = self._hidden_states(batch, side)
                content = batch["attention_mask"].bool()
                if slots is not None:
                    content &= ~slots
                states.extend(hidden[row][content[row]].float().cpu() for row in range(hidden.shape[0]))
        return states

    # --------------------------------------------------------------- encoding
    def encode_queries(
        self,
        items: Sequence[ItemLike] | ItemLike,
        *,
        batch_size: int = 8,
        budget: int | Budget | str | None = None,
        instruction: str | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = False,
        convert_to_tensor: bool = False,
        device: torch.device | str | None = None,
        normalize_embeddings: bool = False,
        show_progress: bool | None = None,
    ) -> torch.Tensor | np.ndarray:
        """Embed queries: float32 CPU tensor ``(N, r_q, D)`` with L2-normalised rows.

        ``budget`` keeps the first ``r_q`` vectors (an int, or a :class:`Budget` /
        ``"r_q,r_c"`` whose ``r_q`` is used); ``None`` keeps all ``num_query_tokens``.
        The other keywords mean what they mean in sentence-transformers
        (:mod:`metaembed.model.encode_options`): ``prompt`` is the instruction of items
        without their own (``instruction`` is the same, ``prompt_name`` names one of
        ``config.prompts``), ``convert_to_numpy`` returns a numpy array,
        ``convert_to_tensor`` a tensor (the default), ``device`` moves the model there,
        ``normalize_embeddings`` re-normalises the rows. ``show_progress_bar=None``
        shows a "queries" bar on a terminal for multi-batch inputs (``show_progress``
        is its deprecated spelling).
        """
        return self._encode_with_options(
            items, "query", batch_size, budget, instruction, prompt, prompt_name, show_progress_bar,
            convert_to_numpy, convert_to_tensor, device, normalize_embeddings, show_progress,
        )

    def encode_candidates(
        self,
        items: Sequence[ItemLike] | ItemLike,
        *,
        batch_size: int = 8,
        budget: int | Budget | str | None = None,
        instruction: str | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = False,
        convert_to_tensor: bool = False,
        device: torch.device | str | None = None,
        normalize_embeddings: bool = False,
        show_progress: bool | None = None,
    ) -> torch.Tensor | np.ndarray:
        """Embed candidates: float32 CPU tensor ``(N, r_c, D)``; keywords as in :meth:`encode_queries` (``r_c``)."""
        return self._encode_with_options(
            items, "candidate", batch_size, budget, instruction, prompt, prompt_name, show_progress_bar,
            convert_to_numpy, convert_to_tensor, device, normalize_embeddings, show_progress,
        )

    def similarity(
        self,
        queries: torch.Tensor | np.ndarray,
        candidates: torch.Tensor | np.ndarray,
        budget: int | Budget | str | tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """MaxSim scores ``(Q, C)`` float32 of query embeddings ``(Q, R_q, D)`` against candidates ``(C, R_c, D)``.

        A single embedding ``(R, D)`` counts as a batch of one. ``budget`` is
        ``(r_q, r_c)`` (a :class:`Budget`, ``"r_q,r_c"`` or a pair; an int is both);
        ``None`` scores every vector given. See :func:`metaembed.scoring.maxsim`.
        """
        queries, candidates = (x[None] if getattr(x, "ndim", 0) == 2 else x for x in (queries, candidates))
        if isinstance(budget, int) and not isinstance(budget, bool):
            budget = Budget(budget, budget)
        return maxsim(queries, candidates, budget)

    def _encode_with_options(
        self,
        items: Sequence[ItemLike] | ItemLike,
        side: Side,
        batch_size: int,
        budget: int | Budget | str | None,
        instruction: str | None,
        prompt: str | None,
        prompt_name: str | None,
        show_progress_bar: bool | None,
        convert_to_numpy: bool,
        convert_to_tensor: bool,
        device: torch.device | str | None,
        normalize_embeddings: bool,
        show_progress: bool | None,
    ) -> torch.Tensor | np.ndarray:
        """The keyword layer (:mod:`metaembed.model.encode_options`) around :meth:`_encode`."""
        instruction = encode_options.resolve_instruction(instruction, prompt, prompt_name, self.config.prompts)
        show = encode_options.resolve_progress(show_progress_bar, show_progress)
        encode_options.move_for_compute(self, device)
        vectors = self._encode(items, side, batch_size, budget, instruction, show)
        return encode_options.finish(
            vectors, convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor,
            normalize_embeddings=normalize_embeddings,
        )

    def _encode(
        self,
        items: Sequence[ItemLike] | ItemLike,
        side: Side,
        batch_size: int,
        budget: int | Budget | str | None,
        instruction: str | None,
        show_progress: bool | None,
    ) -> torch.Tensor:
        keep = self.resolve_budget(budget, side)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        normalised = to_items(items, instruction=instruction)
        # Encode in order of decreasing size so each batch holds items of similar
        # length (less padding); results do not depend on the batch (padding-invariant).
        order = sorted(range(len(normalised)), key=lambda i: _size_hint(normalised[i]), reverse=True)
        starts = range(0, len(order), batch_size)
        # None lets tqdm show the bar only on a terminal; a single batch never needs one
        disable = (None if len(starts) > 1 else True) if show_progress is None else not show_progress
        output = torch.empty(len(order), keep, self.embedding_dim)
        with self.evaluating(), torch.inference_mode():
            for start in tqdm(starts, desc=_PROGRESS_LABELS[side], unit="batch", disable=disable):
                chosen = order[start : start + batch_size]
                batch = self._build([normalised[i] for i in chosen], side, item_numbers=chosen)
                output[chosen] = self.forward(batch, side)[:, :keep].float().cpu()
        return output

    def resolve_budget(self, budget: int | Budget | str | None, side: Side) -> int:
        """The prefix length for ``side``: an int, a :class:`Budget` (or ``"r_q,r_c"``) read for the side, or all.

        Raises :class:`~metaembed.errors.BudgetError` when it is below 1 or above
        the side's number of vectors.
        """
        self._check_side(side)
        available = self.num_vectors(side)
        if budget is None:
            return available
        if isinstance(budget, bool):
            raise BudgetError(f"budget must be an int or a Budget, got {budget!r}")
        if isinstance(budget, int):
            if budget < 1:
                raise BudgetError(f"budget must be at least 1, got {budget}")
            wanted = budget
        else:
            parsed = Budget.parse(budget)
            wanted = parsed.r_q if side == "query" else parsed.r_c
        if wanted > available:
            raise BudgetError(
                f"budget {wanted} asks for {wanted} {side} vectors but the model has only {available} "
                f"({side} Meta Tokens); use 1..{available}"
            )
        return wanted

    @staticmethod
    def _check_side(side: str) -> None:
        if side not in SIDES:
            raise InputError(f"side must be 'query' or 'candidate', got {side!r}")

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation mode while active; the modules that were training train again afterwards."""
        # Switching modes walks every submodule twice (a few ms per call at batch 1), so an
        # already-evaluating model is left alone; one that trains gets each module's mode back.
        training = [module for module in self.modules() if module.training]
        if not training:
            yield
            return
        self.eval()
        try:
            yield
        finally:
            for module in training:
                module.training = True


__all__ = ["MetaEmbedModel"]
