"""Items: what users hand to ``encode_queries`` / ``encode_candidates``.

An item is one of

* a ``str`` — text;
* a ``PIL.Image.Image`` or a ``pathlib.Path`` to an image file — an image;
* a ``dict`` with any of ``"text"``, ``"image"`` (one image), ``"images"`` (a
  list of images, interleaved after each other before the text) and
  ``"instruction"`` (a per-task instruction that is put before the text);
* an :class:`Item`.

A plain ``str`` is always text: pass ``Path("page.png")`` or
``{"image": "page.png"}`` for an image file. Images given as paths are opened
lazily, when the batch that holds them is encoded, so a data set of a million
image paths costs no memory until it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from PIL import Image, UnidentifiedImageError

from metaembed.errors import InputError, ItemTypeError

ImageLike = Union[Image.Image, str, Path]
ItemLike = Union[str, Image.Image, Path, Mapping[str, Any], "Item"]

_ITEM_KEYS = {"text", "image", "images", "instruction"}


@dataclass(frozen=True)
class Item:
    """One query or candidate: optional text, zero or more images, optional instruction.

    ``images`` holds PIL images or paths (opened by :func:`load_image` when the
    item is encoded). At least one of ``text`` and ``images`` is non-empty.
    """

    text: str | None = None
    images: tuple[ImageLike, ...] = field(default_factory=tuple)
    instruction: str | None = None

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise ItemTypeError(f"item text must be a str, got {type(self.text).__name__}")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise ItemTypeError(
                f"item instruction must be a str, got {type(self.instruction).__name__}"
            )
        for image in self.images:
            if not isinstance(image, (Image.Image, str, Path)):
                raise ItemTypeError(
                    f"an item image must be a PIL image or a path, got {type(image).__name__}"
                )
        if not self.images and (self.text is None or self.text == ""):
            raise InputError("an item needs text or at least one image; got neither")

    @property
    def has_image(self) -> bool:
        """Whether the item carries at least one image."""
        return bool(self.images)

    @property
    def modality(self) -> str:
        """``"text"``, ``"image"`` or ``"image+text"``."""
        if self.images and self.text:
            return "image+text"
        return "image" if self.images else "text"


def to_item(obj: ItemLike, instruction: str | None = None) -> Item:
    """Turn anything :data:`ItemLike` into an :class:`Item`.

    ``instruction`` is applied when the item brings none of its own.
    Raises :class:`~metaembed.errors.ItemTypeError` for an unsupported type and
    :class:`~metaembed.errors.InputError` for an empty item.
    """
    if isinstance(obj, Item):
        if instruction is not None and obj.instruction is None:
            return Item(text=obj.text, images=obj.images, instruction=instruction)
        return obj
    if isinstance(obj, str):
        return Item(text=obj, instruction=instruction)
    if isinstance(obj, (Image.Image, Path)):
        return Item(images=(obj,), instruction=instruction)
    if isinstance(obj, Mapping):
        unknown = set(obj) - _ITEM_KEYS
        if unknown:
            raise ItemTypeError(
                f"unknown item keys {sorted(unknown)}; an item dict takes {sorted(_ITEM_KEYS)}"
            )
        images: list[ImageLike] = []
        if obj.get("image") is not None:
            images.append(obj["image"])
        extra = obj.get("images")
        if extra is not None:
            if isinstance(extra, (str, Path, Image.Image)):
                raise ItemTypeError("item key 'images' takes a list of images; use 'image' for one")
            images.extend(extra)
        return Item(
            text=obj.get("text"),
            images=tuple(images),
            instruction=obj.get("instruction", instruction),
        )
    raise ItemTypeError(
        f"cannot encode an item of type {type(obj).__name__}: expected a str (text), a PIL image, "
        "a pathlib.Path to an image, a dict with 'text'/'image'/'images'/'instruction', or an Item"
    )


def to_items(objs: Iterable[ItemLike] | ItemLike, instruction: str | None = None) -> list[Item]:
    """Normalise a batch of items; a single item is accepted as a batch of one.

    Raises :class:`~metaembed.errors.InputError` for an empty batch; the message
    names the position of a bad item.
    """
    if isinstance(objs, (str, Image.Image, Path, Mapping, Item)):
        objs = [objs]
    if not isinstance(objs, Sequence):
        objs = list(objs)
    if len(objs) == 0:
        raise InputError("the batch is empty: give at least one item to encode")
    items = []
    for position, obj in enumerate(objs):
        try:
            items.append(to_item(obj, instruction=instruction))
        except (ItemTypeError, InputError) as error:
            raise type(error)(f"item {position}: {error}") from None
    return items


def load_image(image: ImageLike) -> Image.Image:
    """Open an image (if given as a path) and convert it to RGB.

    Raises :class:`~metaembed.errors.InputError` naming the file when it is
    missing or not a readable image.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"cannot read image {path}: {error}") from None


__all__ = ["Item", "ItemLike", "ImageLike", "to_item", "to_items", "load_image"]
