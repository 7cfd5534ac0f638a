"""Items → a padded, model-ready batch.

Each item is rendered with the prompt template, its images are loaded and
processed by the backbone adapter, its image placeholders expanded, and the
Meta Token slots appended (``num_meta_tokens`` placeholder ids that the model
swaps for the Meta Token table's rows). Rows are then padded, on the left by
default as the official code does; the model gives the same result for right
padding because everything downstream reads the attention mask.
"""

from __future__ import annotations

from typing import Sequence

import torch

from metaembed.errors import InputError
from metaembed.model.backbones import BackboneAdapter, EncodedItem
from metaembed.model.items import Item, load_image
from metaembed.model.templates import SIDES, PromptTemplate

PADDING_SIDES = ("left", "right")


def encode_item(
    adapter: BackboneAdapter,
    template: PromptTemplate,
    item: Item,
    side: str,
    *,
    num_meta_tokens: int,
    max_length: int,
) -> EncodedItem:
    """One item's ids (content, then Meta Token slots) and image tensors."""
    if item.images and not adapter.supports_images:
        raise InputError(
            f"the {adapter.family!r} backbone is text-only and cannot encode images; "
            "give text items or use a vision-language backbone"
        )
    images = [load_image(image) for image in item.images]
    prompt = template.render(item.text, len(images), side, item.instruction)
    encoded = adapter.encode(prompt, images)
    backbone_limit = adapter.max_content_tokens(num_meta_tokens)
    if backbone_limit is not None:
        max_length = min(max_length, backbone_limit)
    if len(encoded.input_ids) > max_length:
        # cut text on the right, as the official Truncation does; never cut into an image
        if adapter.image_token_id is not None and adapter.image_token_id in encoded.input_ids[max_length:]:
            raise InputError(
                f"the item needs {len(encoded.input_ids)} tokens, more than max_length={max_length}, "
                "and cutting it would cut an image; raise max_length or lower max_visual_tokens"
            )
        encoded.input_ids = encoded.input_ids[:max_length]
    encoded.input_ids = encoded.input_ids + [adapter.meta_slot_id] * num_meta_tokens
    return encoded


def build_batch(
    adapter: BackboneAdapter,
    template: PromptTemplate,
    items: Sequence[Item],
    side: str,
    *,
    num_meta_tokens: int,
    max_length: int,
    padding_side: str = "left",
    item_numbers: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """A padded batch: ``input_ids``/``attention_mask`` ``(B, L)`` long plus the adapter's tensors.

    Raises :class:`~metaembed.errors.InputError` naming the position of a bad
    item (``item_numbers[i]`` when given: its place in the caller's list).
    """
    if side not in SIDES:
        raise InputError(f"side must be one of {SIDES}, got {side!r}")
    if padding_side not in PADDING_SIDES:
        raise InputError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    if len(items) == 0:
        raise InputError("the batch is empty: give at least one item to encode")
    encoded: list[EncodedItem] = []
    for position, item in enumerate(items):
        try:
            encoded.append(
                encode_item(adapter, template, item, side, num_meta_tokens=num_meta_tokens, max_length=max_length)
            )
        except InputError as error:
            number = item_numbers[position] if item_numbers is not None else position
            raise InputError(f"item {number}: {error}") from None
    length = max(len(e.input_ids) for e in encoded)
    input_ids = torch.full((len(encoded), length), adapter.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        span = slice(length - n, length) if padding_side == "left" else slice(0, n)
        input_ids[row, span] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, span] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    batch.update(adapter.collate(encoded, input_ids, attention_mask))
    return batch


__all__ = ["build_batch", "encode_item", "PADDING_SIDES"]
