"""Bidirectional text encoders (BERT-style).

Here the Meta Tokens attend to the whole input and the input attends to them
(no causal mask), the natural variant for an encoder. The prompt is
``[CLS]{prefix}{text}[SEP]`` and the Meta Tokens follow ``[SEP]``; positions
are counted over real tokens so padding never shifts them, and the input is
capped so that content plus Meta Tokens fit ``max_position_embeddings``.

A vision-prefix variant (image features from a separate vision encoder placed
before the text) is one more adapter in its own module: subclass
:class:`BertAdapter`, set ``supports_images = True`` and an ``image_token``
present in the vocabulary (e.g. ``[unused0]``), implement ``process_images`` to
return pixel tensors and the number of tokens per image, and override ``run`` to
embed ids, scatter the projected image features at the image-token positions
and call the encoder with ``inputs_embeds`` (the Meta Token hook on
``input_embeddings()`` still applies, since it fires inside the embedding call).

One-way Meta Token attention (``MetaEmbedConfig.meta_attention = "one_way"``)
reproduces the paper's causal layout on an encoder: the input tokens attend
only to each other, the Meta Tokens to the input and to each other. The input's
states are then exactly the pretrained encoder's, so :class:`BertAdapter`
computes the two paths apart (the same numbers as one pass under that attention
mask, which a test checks): the input path with the base weights only (LoRA
adapters, if any, act on the Meta Token rows only), the Meta Token path layer
by layer, its queries reading the input's keys and values of the same layer.
Because the input path is frozen, its per-layer states can be cached by
content (:meth:`BertAdapter.cache_frozen_states`): every later pass over the
same text, in any training step and for any model sharing the cache, runs only
the few Meta Token rows. Dropout is not applied on either path (the input path
is the frozen encoder in evaluation mode; the Meta Token path trains through
its LoRA dropout). At inference with no state cache, :func:`shared_layers` runs the two paths in
one pass per layer instead, each linear layer reading its weight once for both (the same numbers,
which a test checks): at batch 1 that halves the weight reads that dominate a layer.

The same two paths, for a query and without the batch bookkeeping, are
:class:`OneWayQueryPath`: one traceable graph from token ids to the query
embeddings, which :mod:`metaembed.model.query_export` exports to ONNX.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metaembed.model.backbones import BackboneAdapter, positions_from_mask, register
from metaembed.model.templates import PromptTemplate


class FrozenStateCache:
    """The frozen input path's states of token sequences, keyed by their token ids.

    Values are ``(2 * num_layers + 1, length, H)`` tensors in ``dtype``: each layer's attention
    keys and values (what the Meta Tokens read), then the last layer's output (the encoder's
    own token states). One cache may be shared by several models with the same frozen
    backbone (``adapter.state_cache = cache``).
    """

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self._states: dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: bytes) -> torch.Tensor | None:
        """The states stored for ``key``, else ``None``."""
        return self._states.get(key)

    def put(self, key: bytes, states: torch.Tensor) -> None:
        """Store ``states`` ``(2 * layers + 1, length, H)`` for ``key`` (a copy, in the cache dtype)."""
        self._states[key] = states.detach().to(self.dtype).clone()


#: A linear layer's forward as a path computes it: ``(module, rows (..., H_in)) -> (..., H_out)``.
Linear = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _adapted(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``: with its LoRA adapters, if any (the Meta Token rows)."""
    return module(x)


def _base(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A peft LoRA layer's base layer only (the input rows), else ``module(x)``."""
    return getattr(module, "base_layer", module)(x)


def _lora_delta(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """What peft LoRA layer ``module``'s adapters add to its base layer's output of ``x``, or
    ``None`` for a kind this does not reproduce (DoRA and other variants, merged or disabled
    adapters: the caller then runs ``module(x)`` itself)."""
    if getattr(module, "merged", True) or getattr(module, "disable_adapters", True) or getattr(module, "lora_variant", None):
        return None
    delta = None
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        weight = module.lora_A[name].weight
        part = module.lora_B[name](module.lora_A[name](module.lora_dropout[name](x.to(weight.dtype)))) * module.scaling[name]
        delta = part if delta is None else delta + part
    return delta  # None when no adapter is active: the caller runs the module


def _split_linear(split: int) -> Linear:
    """One weight read for both paths (inference): the base layer on every row, the LoRA
    adapters' part added to rows ``split:`` (the Meta Tokens) only."""

    def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = _base(module, x)
        if not hasattr(module, "base_layer"):  # a plain layer: nothing to add
            return out
        delta = _lora_delta(module, x[split:])
        if delta is None:
            out[split:] = module(x[split:])
        else:
            out[split:] += delta
        return out

    return linear


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _project(layer: nn.Module, rows: torch.Tensor, linear: Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A BERT layer's query, key and value projections of ``rows`` ``(..., H)`` (any leading shape)."""
    attention = layer.attention.self
    return linear(attention.query, rows), linear(attention.key, rows), linear(attention.value, rows)


def _attend(layer: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of ``query`` ``(B, n, H)`` over ``key`` / ``value`` ``(B, m, H)`` where
    ``mask`` ``(B, m)`` is true: ``(B, n, H)``."""
    heads = layer.attention.self.num_attention_heads
    attended = F.scaled_dot_product_attention(
        _heads(query, heads), _heads(key, heads), _heads(value, heads), attn_mask=mask[:, None, None, :].bool(),
        scale=1.0 / math.sqrt(query.shape[-1] // heads),
    )
    return attended.transpose(1, 2).reshape(query.shape)


def _finish(layer: nn.Module, attended: torch.Tensor, rows: torch.Tensor, linear: Linear) -> torch.Tensor:
    """The rest of a BERT layer after attention (row-wise, any leading shape): output projection,
    residual and norm, feed-forward, residual and norm."""
    output = layer.attention.output
    hidden = output.LayerNorm(linear(output.dense, attended) + rows)
    intermediate = layer.intermediate.intermediate_act_fn(linear(layer.intermediate.dense, hidden))
    return layer.output.LayerNorm(linear(layer.output.dense, intermediate) + hidden)


def _padded(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(T, H)`` rows put at the true places of ``mask`` ``(B, L)`` (``T`` of them): ``(B, L, H)``, zeros elsewhere."""
    out = tokens.new_zeros(*mask.shape, tokens.shape[-1])
    out[mask] = tokens
    return out


def encoder_layer(
    layer: nn.Module,
    rows: torch.Tensor,
    row_mask: torch.Tensor,
    *,
    adapted: bool,
    context: tuple[torch.Tensor, torch.Tensor] | None = None,
    context_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One BERT layer (post-norm) for ``rows`` ``(B, n, H)``, without dropout.

    The rows attend to themselves (keys where ``row_mask`` ``(B, n)`` is true) and, when
    given, to the ``context`` keys and values ``(B, m, H)`` each (where ``context_mask`` is
    true). ``adapted`` applies LoRA adapters to the rows' own projections. Returns the rows'
    outputs ``(B, n, H)`` and their own keys and values ``(B, n, H)``.
    """
    linear = _adapted if adapted else _base
    query, own_key, own_value = _project(layer, rows, linear)
    key, value, mask = own_key, own_value, row_mask
    if context is not None:
        key = torch.cat([context[0].to(own_key.dtype), own_key], dim=1)
        value = torch.cat([context[1].to(own_value.dtype), own_value], dim=1)
        mask = torch.cat([context_mask, row_mask], dim=1)
    return _finish(layer, _attend(layer, query, key, value, mask), rows, linear), own_key, own_value


def unpadded_layers(layers: Sequence[nn.Module], embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The base BERT layers over right-padded inputs, doing the row-wise work on real tokens only.

    ``embeddings`` ``(B, L, H)``, ``mask`` ``(B, L)`` true at real tokens. The projections, norms
    and feed-forward (most of a layer's cost) run on the ``T`` real tokens, not on ``B * L``
    padded places (a batch of sorted passages pads to its longest: up to half of the places);
    attention alone runs padded. Returns ``(2 * layers + 1, B, L, H)``: each layer's keys and
    values, then the last layer's output, zeros at padding: :func:`encoder_layer`'s numbers at
    the real tokens.
    """
    tokens, states = embeddings[mask], []
    for layer in layers:
        query, key, value = _project(layer, tokens, _base)
        key, value = _padded(key, mask), _padded(value, mask)
        tokens = _finish(layer, _attend(layer, _padded(query, mask), key, value, mask)[mask], tokens, _base)
        states += [key, value]
    states.append(_padded(tokens, mask))
    return torch.stack(states)


def shared_layers(
    layers: Sequence[nn.Module], tokens: torch.Tensor, mask: torch.Tensor, meta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both paths of one-way attention in one pass per layer, for inference (no gradients).

    ``tokens`` ``(T, H)`` are the input's real tokens, the true places of ``mask`` ``(B, L)`` in
    row-major order; ``meta`` ``(B, R, H)`` the Meta Token rows. Each linear layer reads its
    weight once for both: its base weight on all ``T + B * R`` rows, the LoRA adapters' low-rank
    part added on the Meta Token rows (at batch 1 the weight reads, not the arithmetic, are most
    of a layer's time, so two paths that each read every weight cost nearly twice one).
    Attention stays apart: the input over the input, the Meta Tokens over the input and each
    other. Returns the last layer's ``(T, H)`` input states and ``(B, R, H)`` Meta Token states:
    :func:`unpadded_layers` and :func:`encoder_layer`'s numbers.
    """
    size, count, width = meta.shape
    split = tokens.shape[0]
    linear = _split_linear(split)
    both = torch.cat([mask, mask.new_ones(size, count)], dim=1)
    rows = torch.cat([tokens, meta.reshape(-1, width)])
    for layer in layers:
        query, key, value = _project(layer, rows, linear)
        input_key, input_value = _padded(key[:split], mask), _padded(value[:split], mask)
        attended = _attend(layer, _padded(query[:split], mask), input_key, input_value, mask)[mask]
        meta_key = torch.cat([input_key, key[split:].view(size, count, width)], dim=1)
        meta_value = torch.cat([input_value, value[split:].view(size, count, width)], dim=1)
        meta_attended = _attend(layer, query[split:].view(size, count, width), meta_key, meta_value, both)
        rows = _finish(layer, torch.cat([attended, meta_attended.reshape(-1, width)]), rows, linear)
    return rows[:split], rows[split:].view(size, count, width)


class OneWayQueryPath(nn.Module):
    """The query side of a one-way MetaEmbed BERT model as one graph: ids → ``(B, R_q, D)`` embeddings.

    ``input_ids`` / ``attention_mask`` ``(B, L)`` long are the formatted queries' tokens (template
    applied, already cut to the model's content limit), padded on the right and *without* Meta
    Token slots; the query Meta Tokens are appended inside, at positions after each query's last
    token. Returns float32 ``(B, R_q, D)`` L2-normalised rows, the numbers
    ``MetaEmbedModel.encode_queries`` gives (no data-dependent Python control flow, so that
    tracing for ONNX export captures it for every length and batch size).
    """

    def __init__(self, adapter: "BertAdapter", meta_tokens: nn.Module, projection: nn.Module | None) -> None:
        super().__init__()
        self.backbone = adapter.backbone
        self.meta_tokens = meta_tokens
        self.projection = projection
        self.rows = meta_tokens.appended_rows("query", causal=False, one_way=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeddings = self.backbone.embeddings
        mask = attention_mask.bool()
        hidden = embeddings(
            input_ids=input_ids, position_ids=positions_from_mask(attention_mask), token_type_ids=torch.zeros_like(input_ids)
        )
        size, count = input_ids.shape[0], self.rows.stop - self.rows.start
        # the Meta Token rows enter where the embedding lookup's output would (as MetaTokens.injected does)
        offsets = torch.arange(count, device=input_ids.device)[None, :]
        meta_positions = attention_mask.sum(dim=1, keepdim=True) + offsets
        table = self.meta_tokens.weight[self.rows].unsqueeze(0).expand(size, -1, -1)
        meta = embeddings(
            inputs_embeds=table, position_ids=meta_positions, token_type_ids=torch.zeros_like(meta_positions)
        )
        meta_mask = torch.ones_like(meta_positions, dtype=torch.bool)
        for layer in self.backbone.encoder.layer:
            # the Meta Tokens read this layer's keys and values of the input (base weights)
            hidden, key, value = encoder_layer(layer, hidden, mask, adapted=False)
            meta, _, _ = encoder_layer(layer, meta, meta_mask, adapted=True, context=(key, value), context_mask=mask)
        vectors = self.meta_tokens.read_out(meta, "query", self.rows).float()
        if self.projection is not None:
            vectors = self.projection(vectors)
        return F.normalize(vectors, p=2, dim=-1)


@register
class BertAdapter(BackboneAdapter):
    """BERT and BERT-like encoders (``BertModel``: absolute positions, token types)."""

    family = "bert"
    model_types = ("bert",)
    causal = False
    supports_one_way = True
    #: states of frozen input paths (one-way attention), shared by whoever sets it; ``None``: off
    state_cache: FrozenStateCache | None = None
    default_template = PromptTemplate(
        prompt="[CLS]{images}{prefix}{text}[SEP]",
        image_placeholder="",
        query_suffix="",
        instruction_format="{instruction} ",
    )
    lora_target_modules = r".*encoder\.layer\.\d+\..*(query|key|value|dense)"

    def max_content_tokens(self, num_meta_tokens: int) -> int | None:
        return int(self.backbone.config.max_position_embeddings) - num_meta_tokens

    def cache_frozen_states(self, enabled: bool = True, dtype: torch.dtype = torch.float32) -> FrozenStateCache | None:
        """Cache the input path's per-layer states by content (one-way attention only).

        Returns the new cache (``None`` when turned off); assign it to another model's
        ``adapter.state_cache`` to share it. A float16 cache halves the memory for a rounding
        of the cached states (training); float32 keeps encodings identical to uncached ones.
        """
        self.state_cache = FrozenStateCache(dtype) if enabled else None
        return self.state_cache

    def query_path(self, meta_tokens: nn.Module, projection: nn.Module | None) -> nn.Module | None:
        if self.config.meta_attention != "one_way" or not type(self).supports_one_way or type(self).run is not BertAdapter.run:
            return None  # the exported graph is the one-way text path of this class, nothing else
        return OneWayQueryPath(self, meta_tokens, projection)

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if batch.get("meta_slots") is not None:
            return self._run_one_way(batch)
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        output = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            token_type_ids=torch.zeros_like(input_ids),
        )
        return output.last_hidden_state

    def _layers(self) -> nn.ModuleList:
        return self.backbone.encoder.layer

    def _input_states(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The frozen input path of right-padded inputs: ``(2 * layers + 1, B, L, H)``
        (each layer's keys and values, then the last layer's output)."""
        return unpadded_layers(self._layers(), embeddings, mask)

    def _run_one_way(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask, slots = batch["input_ids"], batch["attention_mask"], batch["meta_slots"]
        content = attention_mask.bool() & ~slots
        # The Meta Token hook fires inside this call; positions continue after the input.
        embeddings = self.backbone.embeddings(
            input_ids=input_ids,
            position_ids=positions_from_mask(attention_mask),
            token_type_ids=torch.zeros_like(input_ids),
        )
        size, width = input_ids.shape[0], embeddings.shape[-1]
        meta = embeddings[slots].view(size, -1, width)
        lengths = content.sum(dim=1)
        longest = int(lengths.max())
        packed_mask = torch.arange(longest, device=input_ids.device)[None, :] < lengths[:, None]
        if not torch.is_grad_enabled() and self.state_cache is None:  # inference: both paths share each weight read
            tokens, meta = shared_layers(self._layers(), embeddings[content], packed_mask, meta)
            return self._placed(embeddings, content, tokens, slots, meta)
        # the input path is fixed when no gradient can reach its (base) weights
        frozen = not torch.is_grad_enabled() or not any(
            p.requires_grad for n, p in self.backbone.named_parameters() if "lora_" not in n
        )
        states = self._packed_states(input_ids, content, embeddings, packed_mask, frozen)
        meta_mask = torch.ones(meta.shape[:2], dtype=torch.bool, device=meta.device)
        for index, layer in enumerate(self._layers()):
            context = (states[2 * index], states[2 * index + 1])
            meta, _, _ = encoder_layer(layer, meta, meta_mask, adapted=True, context=context, context_mask=packed_mask)
        return self._placed(embeddings, content, states[-1][packed_mask].to(meta.dtype), slots, meta)

    @staticmethod
    def _placed(
        embeddings: torch.Tensor, content: torch.Tensor, tokens: torch.Tensor, slots: torch.Tensor, meta: torch.Tensor
    ) -> torch.Tensor:
        """``(B, L, H)``: the input's last-layer states ``tokens`` ``(T, H)`` at the true places of
        ``content``, the Meta Tokens' ``meta`` ``(B, R, H)`` at the ``slots``, zeros elsewhere."""
        hidden = embeddings.new_zeros(embeddings.shape[0], embeddings.shape[1], embeddings.shape[-1], dtype=meta.dtype)
        hidden = hidden.masked_scatter(content.unsqueeze(-1), tokens.to(meta.dtype))
        return hidden.masked_scatter(slots.unsqueeze(-1), meta)

    def _packed_states(
        self,
        input_ids: torch.Tensor,
        content: torch.Tensor,
        embeddings: torch.Tensor,
        packed_mask: torch.Tensor,
        frozen: bool,
    ) -> torch.Tensor:
        """``(2 * layers + 1, B, L_in, H)`` input-path states, the inputs packed to the left."""
        size, longest, width = content.shape[0], packed_mask.shape[1], embeddings.shape[-1]
        cache = self.state_cache if frozen else None
        keys = [input_ids[row][content[row]].cpu().numpy().tobytes() for row in range(size)] if cache is not None else []
        stored = [cache.get(key) for key in keys] if cache is not None else [None] * size
        missing = [row for row in range(size) if stored[row] is None]
        dtype = cache.dtype if cache is not None else embeddings.dtype
        states = embeddings.new_zeros(2 * len(self._layers()) + 1, size, longest, width, dtype=dtype)
        if missing:
            packed = embeddings.new_zeros(len(missing), longest, width)
            packed[packed_mask[missing]] = embeddings[missing][content[missing]]
            with torch.no_grad() if frozen else contextlib.nullcontext():
                fresh = self._input_states(packed, packed_mask[missing])
            states = states.index_copy(1, torch.tensor(missing, device=states.device), fresh.to(dtype))
            if cache is not None:
                for position, row in enumerate(missing):
                    cache.put(keys[row], fresh[:, position, : int(lengths_of(packed_mask, row))])
        for row in range(size):
            if stored[row] is not None:
                states[:, row, : stored[row].shape[1]] = stored[row]
        return states


def lengths_of(mask: torch.Tensor, row: int) -> int:
    """Real tokens in ``row`` of a ``(B, L)`` mask."""
    return int(mask[row].sum())


__all__ = ["BertAdapter", "FrozenStateCache", "OneWayQueryPath", "encoder_layer", "shared_layers", "unpadded_layers"]
