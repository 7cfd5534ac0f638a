"""Read a user's collection -- a folder or a JSONL file -- into records ready to index.

A *record* is one thing to embed as a candidate: a stable string id (what search results return),
the :class:`~metaembed.model.items.Item` to encode and a small JSON payload stored beside it in the
index (the file's path relative to the indexed folder, its content hash, a PDF page number, the
passage's character range, a text snippet) so results can be shown without the original files.

* A **folder** is walked recursively in sorted order (hidden files and folders are left out):
  images (``.png .jpg .jpeg .webp .bmp .gif .tif .tiff``), PDFs (one record per page) and text
  files (``.txt .md .rst .csv .tsv .json .yaml .yml .tex .log``). Ids are paths relative to the
  folder, with ``#page=N`` (1-based) for PDF pages. A model that reads images gets images and
  rendered PDF pages; a text-only model gets a PDF page's text layer, and OCR's reading of an
  image or of a page without a text layer (:mod:`metaembed.ocr`). Other files, empty files and
  unreadable ones are *skipped*, each with a one-line reason (:class:`Skipped`).
* A **JSONL** file holds one object per line with an ``"id"`` and at least one of ``"text"``,
  ``"image"`` (a path, relative to the JSONL file's folder) and ``"instruction"``; every other key
  is kept in the payload. BEIR's ``corpus.jsonl`` / ``queries.jsonl`` read as they are: ``"_id"``
  stands for ``"id"``, and a ``"title"`` goes before the text with a space (BEIR's convention).
* **Long texts** are split into passages that fit the model (``ReadOptions.split``: token
  windows with overlap, see :func:`token_windows`); a split record's id gains ``#passage=N``
  (``&passage=N`` after a page) and its payload the passage's ``chars`` range. A text that fits
  keeps its plain id. Nothing is cut silently.

Every record of a file carries the file's SHA-256 (``payload["sha256"]``), so an update can tell
a changed file from an unchanged one without reading it again (see
:func:`metaembed.retriever.update_index`). Records of a folder are read file by file, lazily.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from PIL import Image

from metaembed.errors import InputError
from metaembed.jsonl import iter_jsonl
from metaembed.model.items import Item, to_item

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
PDF_SUFFIXES = frozenset({".pdf"})
TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".yaml", ".yml", ".tex", ".log"})
#: How many characters of a text item are kept in its payload as a snippet.
SNIPPET_CHARS = 200
#: PDF pages are rendered at this many pixels per inch (72 is the PDF unit): enough to read,
#: small enough for a vision encoder's budget.
PDF_DPI = 100
#: Pages read by OCR are rendered finer: small print needs about 150 dpi to be recognised.
OCR_DPI = 150

#: A text -> passage splitter: the ``(start, end)`` character ranges of the passages, in order.
Splitter = Callable[[str], list[tuple[int, int]]]


@dataclass
class Record:
    """One candidate to index: ``id``, a lazily built ``item`` and a JSON-serialisable ``payload``."""

    id: str
    load: Callable[[], Item] = field(repr=False)
    payload: dict[str, Any] = field(default_factory=dict)

    def item(self) -> Item:
        """Build the item (opens or renders the file now)."""
        return self.load()


@dataclass(frozen=True)
class Skipped:
    """A file (or record) left out of the collection, and why, in one line."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ReadOptions:
    """How files become records.

    ``images``: the model encodes images (otherwise images and PDF pages are read as text:
    the PDF's text layer, else OCR). ``split``: cuts long texts into passages (``None``: one
    record per text).
    """

    images: bool = True
    split: Splitter | None = None


@dataclass(frozen=True)
class SourceFile:
    """A file of a folder collection: its absolute ``path`` and its id ``rel`` (relative, POSIX)."""

    path: Path
    rel: str

    @property
    def kind(self) -> str:
        """``"image"``, ``"pdf"`` or ``"text"``."""
        suffix = self.path.suffix.lower()
        return "image" if suffix in IMAGE_SUFFIXES else "pdf" if suffix in PDF_SUFFIXES else "text"

    def content_hash(self) -> str:
        """SHA-256 of the file's bytes, hex."""
        digest = hashlib.sha256()
        with self.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def file_of(record_id: str) -> str:
    """The file part of a folder record's id (``"a/b.pdf#page=2"`` -> ``"a/b.pdf"``)."""
    return record_id.split("#", 1)[0]


# --- folders ---------------------------------------------------------------------------------
def scan_folder(root: str | Path, exclude: Iterable[str | Path] = ()) -> tuple[list[SourceFile], list[Skipped]]:
    """The indexable files under ``root`` in sorted order, and the files skipped for their type.

    Hidden files and folders (a name starting with ``.``) and everything under ``exclude`` (the
    index folder itself, when it lives inside the collection) are left out without a word.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"input folder not found: {root}")
    excluded = [Path(p).resolve() for p in exclude]
    files: list[SourceFile] = []
    skipped: list[Skipped] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        resolved = path.resolve()
        if any(resolved.is_relative_to(folder) for folder in excluded):
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES or suffix in PDF_SUFFIXES or suffix in TEXT_SUFFIXES:
            files.append(SourceFile(path, rel.as_posix()))
        else:
            skipped.append(Skipped(rel.as_posix(), f"unsupported file type {suffix or '(no suffix)'}"))
    return files, skipped


def read_file(file: SourceFile, options: ReadOptions = ReadOptions(), content_hash: str | None = None) -> list[Record]:
    """The records of one file; :class:`InputError` with the reason when it cannot be read."""
    sha = content_hash or file.content_hash()
    base = {"path": file.rel, "sha256": sha}
    try:
        if file.kind == "image":
            return _image_records(file, base, options)
        if file.kind == "pdf":
            return _pdf_records(file, base, options)
        return _text_records(file.rel, _read_text_file(file.path), base, options.split)
    except OSError as error:
        raise InputError(f"cannot read {file.rel}: {error.strerror or error}") from None


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise InputError("binary content in a text file")
    return data.decode("utf-8", errors="replace")


def _image_records(file: SourceFile, base: dict[str, Any], options: ReadOptions) -> list[Record]:
    try:
        with Image.open(file.path) as image:
            if options.images:
                image.verify()  # header and structure; cheap, and catches most broken files
                return [Record(file.rel, (lambda p=file.path: Item(images=(p,))), dict(base))]
            image.load()
            text = _ocr(image)
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports a broken file with any of these
        raise InputError(f"not a readable image ({error})") from None
    if not text.strip():
        raise InputError("OCR found no text in the image")
    return _text_records(file.rel, text, base | {"ocr": True}, options.split)


def _ocr(image: Image.Image) -> str:
    from metaembed.ocr import read_text

    return read_text(image)


def _pdf_records(file: SourceFile, base: dict[str, Any], options: ReadOptions) -> list[Record]:
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(str(file.path))
    except pypdfium2.PdfiumError as error:
        raise InputError(f"not a readable PDF ({error})") from None
    try:
        pages = len(document)
        if pages == 0:
            raise InputError("the PDF has no pages")
        if options.images:
            return [
                Record(
                    f"{file.rel}#page={number}",
                    (lambda p=file.path, n=number: Item(images=(render_pdf_page(p, n),))),
                    base | {"page": number},
                )
                for number in range(1, pages + 1)
            ]
        records: list[Record] = []
        for number in range(1, pages + 1):
            page = document[number - 1]
            text = page.get_textpage().get_text_range().replace("\r\n", "\n").strip()
            payload = base | {"page": number}
            if not text:  # a scanned page: read it
                text = _ocr(page.render(scale=OCR_DPI / 72).to_pil().convert("RGB"))
                payload["ocr"] = True
            if text.strip():
                records.extend(_text_records(f"{file.rel}#page={number}", text, payload, options.split, "&"))
        if not records:
            raise InputError("no text on any page (text layer and OCR both empty)")
        return records
    finally:
        document.close()


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


def _text_records(
    record_id: str,
    text: str,
    payload: dict[str, Any],
    split: Splitter | None,
    joiner: str = "#",
    instruction: str | None = None,
) -> list[Record]:
    """One record for ``text``, or one per passage when ``split`` cuts it."""
    if not text.strip():
        raise InputError("empty text")
    spans = split(text) if split is not None else [(0, len(text))]
    if len(spans) <= 1:
        return [Record(
            record_id, (lambda t=text: Item(text=t, instruction=instruction)),
            payload | {"text": text.strip()[:SNIPPET_CHARS]},
        )]
    records = []
    for number, (start, end) in enumerate(spans, start=1):
        passage = text[start:end]
        records.append(Record(
            f"{record_id}{joiner}passage={number}",
            (lambda t=passage: Item(text=t, instruction=instruction)),
            payload | {"passage": number, "chars": [start, end], "text": passage.strip()[:SNIPPET_CHARS]},
        ))
    return records


def token_windows(offsets: Sequence[tuple[int, int]], text_length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Character ranges of windows of ``window`` tokens, consecutive windows sharing ``overlap`` tokens.

    ``offsets`` are the tokens' ``(start, end)`` character offsets (a fast tokenizer's
    ``offset_mapping``). The first window starts at character 0 and the last ends at
    ``text_length``, so every character lies in some window.

    >>> token_windows([(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)], 9, window=2, overlap=1)
    [(0, 3), (2, 5), (4, 7), (6, 9)]
    >>> token_windows([(0, 2), (3, 5)], 5, window=4, overlap=1)
    [(0, 5)]
    """
    if window < 1 or not 0 <= overlap < window:
        raise InputError(f"passage windows need window >= 1 and 0 <= overlap < window, got {window}, {overlap}")
    if len(offsets) <= window:
        return [(0, text_length)]
    step = window - overlap
    spans = []
    for first in range(0, len(offsets), step):
        last = min(first + window, len(offsets)) - 1
        start = 0 if first == 0 else offsets[first][0]
        end = text_length if last == len(offsets) - 1 else offsets[last][1]
        spans.append((start, end))
        if last == len(offsets) - 1:
            break
    return spans


def iter_folder(
    root: Path, options: ReadOptions = ReadOptions(), skipped: list[Skipped] | None = None, strict: bool = False
) -> Iterator[Record]:
    """Records of every indexable file under ``root``; unreadable files go to ``skipped`` (or raise with ``strict``)."""
    files, unsupported = scan_folder(root)
    if strict and unsupported:
        raise InputError(str(unsupported[0]))
    if skipped is not None:
        skipped.extend(unsupported)
    for file in files:
        try:
            yield from read_file(file, options)
        except InputError as error:
            if strict or skipped is None:
                raise InputError(f"{file.rel}: {error}") from None
            skipped.append(Skipped(file.rel, str(error)))


# --- JSONL -----------------------------------------------------------------------------------
def iter_jsonl_records(path: Path, split: Splitter | None = None) -> Iterator[Record]:
    """Records of a JSONL file (see the module docstring); each payload holds the line's SHA-256."""
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
        payload["sha256"] = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()
        if "image" in item_fields:
            payload["path"] = str(row["image"])
        if item.text and not item.images:
            try:
                yield from _text_records(str(row[id_key]), item.text, payload, split, instruction=item.instruction)
            except InputError as error:
                raise InputError(f"{path}, line {number}: {error}") from None
            continue
        if item.text:
            payload["text"] = item.text[:SNIPPET_CHARS]
        yield Record(str(row[id_key]), (lambda it=item: it), payload)


def iter_records(
    source: str | Path,
    options: ReadOptions = ReadOptions(),
    *,
    skipped: list[Skipped] | None = None,
    strict: bool = False,
) -> Iterator[Record]:
    """Yield the records of a folder or a ``.jsonl`` file (see the module docstring).

    Raises :class:`~metaembed.errors.InputError` at once when ``source`` does not exist or is
    neither a folder nor a ``.jsonl`` file, and while iterating for a malformed JSONL line (the
    message gives the line number). A folder's unreadable or unsupported files are appended to
    ``skipped`` when it is given and ``strict`` is false; otherwise the first one raises.
    """
    path = Path(source)
    if path.is_dir():
        return iter_folder(path, options, skipped, strict)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return iter_jsonl_records(path, options.split)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    raise InputError(f"input {path} is neither a folder nor a .jsonl file")


__all__ = [
    "IMAGE_SUFFIXES", "PDF_SUFFIXES", "TEXT_SUFFIXES", "ReadOptions", "Record", "Skipped", "SourceFile", "Splitter",
    "file_of", "iter_folder", "iter_jsonl_records", "iter_records", "read_file", "render_pdf_page", "scan_folder",
    "token_windows",
]
