"""Prompt templates: how an item becomes the text the backbone reads.

The defaults follow the official MetaEmbed processor with ``use_simple_prompt``
(research notes §1.3). For Qwen-VL::

    text only   <|im_start|>user\\n{prefix}{text}<|im_end|><|endoftext|>
    image only  <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{prefix}Describe the image.<|im_end|><|endoftext|>
    image+text  <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{prefix}{text}<|im_end|><|endoftext|>

``prefix`` is ``"Query: "`` for queries and empty for candidates, and a query
gets the query-augmentation suffix (10 × ``<|endoftext|>`` then ``"\\n"``) after
the whole prompt. The Meta Tokens are appended after all of this.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Side = Literal["query", "candidate"]
SIDES: tuple[str, ...] = ("query", "candidate")


@dataclass(frozen=True)
class PromptTemplate:
    """A family's prompt format.

    ``prompt`` is a ``str.format`` pattern with ``{images}`` (one
    ``image_placeholder`` per image, in order), ``{prefix}`` (the side's prefix)
    and ``{text}`` (instruction + text, or ``image_only_text`` for a bare image).
    """

    prompt: str = "<|im_start|>user\n{images}{prefix}{text}<|im_end|><|endoftext|>"
    image_placeholder: str = "<|vision_start|><|image_pad|><|vision_end|>"
    image_only_text: str = "Describe the image."
    query_prefix: str = "Query: "
    candidate_prefix: str = ""
    query_suffix: str = "<|endoftext|>" * 10 + "\n"
    candidate_suffix: str = ""
    instruction_format: str = "{instruction}\n"

    def render(self, text: str | None, num_images: int, side: Side, instruction: str | None = None) -> str:
        """The full prompt for one item (image placeholders not yet expanded)."""
        body = text if text else (self.image_only_text if num_images else "")
        if instruction:
            body = self.instruction_format.format(instruction=instruction) + body
        prefix = self.query_prefix if side == "query" else self.candidate_prefix
        suffix = self.query_suffix if side == "query" else self.candidate_suffix
        prompt = self.prompt.format(images=self.image_placeholder * num_images, prefix=prefix, text=body)
        return prompt + suffix

    def with_changes(self, **changes: str) -> "PromptTemplate":
        """A copy with some fields replaced."""
        return replace(self, **changes)


__all__ = ["PromptTemplate", "Side", "SIDES"]
