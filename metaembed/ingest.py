"""Read a user's collection -- a folder or a JSONL file -- into records ready to index.

A *record* is one thing to embed as a candidate: a stable string id (what search results return),
the :class:`~metaembed.model.items.Item` to encode and a small JSON payload stored beside it in the
index (the source path, a PDF page number, a text snippet) so results can be shown without the
original files.

* A **folder** is walked recursively in sorted order: images (``.png .jpg .jpeg .webp .bmp .gif
  .tif .tiff``) become image items, PDFs become one image item per page (rendered with
  ``pypdfium2``), text files (``.txt .md .rst``) become text items. Ids are paths relative to the
  folder, with ``#page=N`` (1-based) for PDF pages. Other files are skipped and counted.
* A **JSONL** file holds one object per line with an ``"id"`` and at least one of ``"text"``,
  ``"image"`` (a path, relative to the JSONL file's folder) and ``"instruction"``; every other key
  is kept in the payload. BEIR's ``corpus.jsonl`` / ``queries.jsonl`` read as they are: ``"_id"``
  stands for ``"id"``, and a ``"title"`` goes before the text with a space (BEIR's convention).

Records are produced lazily (a PDF page is rendered only when its batch is encoded), so a large
collection costs no memory up front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from metaembed.errors import InputError
from metaembed.jsonl import iter_jsonl
from metaembed.model.items import Item, to_item

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
PDF_SUFFIXES = frozenset({".pdf"})
TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst"})
#: How many characters of a text item are kept in its payload as a snippet.
SNIPPET_CHARS = 200
#: PDF pages are rendered at this many pixels per inch (72 is the PDF unit): enough to read,
#: small enough for a vision encoder's budget.
PDF_DPI = 100


@dataclass
class Record:
    """One candidate to index: ``id``, a lazily built ``item`` and a JSON-serialisable ``payload``."""

    id: str
    load: Callable[[], Item] = field(repr=False)
    payload: dict[str, Any] = field(default_factory=dict)

    def item(self) -> Item:
        """Build the item (opens or renders the file now)."""
        return self.load()


def iter_records(source: str | Path) -> Iterator[Record]:
    """Yield the records of a folder or a ``.jsonl`` file (see the module docstring).

    Raises :class:`~metaembed.errors.InputError` when ``source`` does not exist, is neither a
    folder nor a ``.jsonl`` file, or a JSONL line is malformed (the message gives the line number).
    """
    path = Path(source)
    if path.is_dir():
        return _iter_folder(path)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return _iter_jsonl(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    raise InputError(f"input {path} is neither a folder nor a .jsonl file")


def _iter_folder(root: Path) -> Iterator[Record]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        rel = path.relative_to(root).as_posix()
        if suffix in IMAGE_SUFFIXES:
            yield Record(rel, (lambda p=path: Item(images=(p,))), {"path": str(path)})
        elif suffix in PDF_SUFFIXES:
            yield from _pdf_records(path, rel)
        elif suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                yield Record(
                    rel, (lambda t=text: Item(text=t)), {"path": str(path), "text": text[:SNIPPET_CHARS]}
                )


def _pdf_records(path: Path, rel: str) -> Iterator[Record]:
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(str(path))
    except pypdfium2.PdfiumError as error:
        raise InputError(f"cannot read PDF {path}: {error}") from None
    pages = len(document)
    document.close()
    for number in range(1, pages + 1):
        yield Record(
            f"{rel}#page={number}",
            (lambda p=path, n=number: Item(images=(render_pdf_page(p, n),))),
            {"path": str(path), "page": number},
        )


def render_pdf_page(path: str | Path, page: int, dpi: int = PDF_DPI) -> Image.Image:
    """Render page ``page`` (1-based) of a PDF to an RGB PIL image at ``dpi``."""
    import pypdfium2

    document = pypdfium2.PdfDocument(str(path))
    try:
        if not 1 <= page <= len(document):
            raise InputError(f"{path} has {len(document)} pages; page {page} does not exist")
        bitmap = document[page - 1].render(scale=dpi / 72)
        return bitmap.to_pil().convert("RGB")
    finally:
        document.close()


def _iter_jsonl(path: Path) -> Iterator[Record]:
    base = path.parent
    for number, row in iter_jsonl(path):
        id_key = "id" if "id" in row else "_id"
        if id_key not in row:
            raise InputError(f"{path}, line {number}: expected an object with an 'id' (or BEIR '_id') key")
        item_fields = {k: row[k] for k in ("text", "image", "instruction") if row.get(k) is not None}
        if row.get("title") and id_key == "_id":
            item_fields["text"] = " ".join(str(p) for p in (row["title"], row.get("text")) if p)
        if "image" in item_fields:
            image = Path(item_fields["image"])
            item_fields["image"] = image if image.is_absolute() else base / image
        try:
            item = to_item(item_fields)
        except (TypeError, ValueError) as error:
            raise InputError(f"{path}, line {number}: {error}") from None
        payload = {k: v for k, v in row.items() if k not in (id_key, "image", "text")}
        if "image" in item_fields:
            payload["path"] = str(item_fields["image"])
        if item.text:
            payload["text"] = item.text[:SNIPPET_CHARS]
        yield Record(str(row[id_key]), (lambda it=item: it), payload)
