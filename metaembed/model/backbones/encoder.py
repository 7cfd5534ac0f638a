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
"""

from __future__ import annotations

from typing import Mapping

import torch

from metaembed.model.backbones import BackboneAdapter, positions_from_mask, register
from metaembed.model.templates import PromptTemplate


@register
class BertAdapter(BackboneAdapter):
    """BERT and BERT-like encoders (``BertModel``: absolute positions, token types)."""

    family = "bert"
    model_types = ("bert",)
    causal = False
    default_template = PromptTemplate(
        prompt="[CLS]{images}{prefix}{text}[SEP]",
        image_placeholder="",
        query_suffix="",
        instruction_format="{instruction} ",
    )
    lora_target_modules = r".*encoder\.layer\.\d+\..*(query|key|value|dense)"

    def max_content_tokens(self, num_meta_tokens: int) -> int | None:
        return int(self.backbone.config.max_position_embeddings) - num_meta_tokens

    def run(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        output = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            token_type_ids=torch.zeros_like(input_ids),
        )
        return output.last_hidden_state


__all__ = ["BertAdapter"]
