"""Documentation pages and queries from Debian's HTML manuals: the built-in model's data.

A *page* is a run of consecutive blocks of one manual file (headings, paragraphs, list items,
definitions, a little code), starting at a section heading where it can and holding about
``page_words`` words, so it covers a section with its subsections or several entries of a
reference page. Each page gets queries that target one part of it:

* ``sentence`` — a sentence taken out of the page (the page text no longer contains it);
* ``heading`` — a heading inside the page of at least three words (kept in the page), asked as
  "<manual title>: <heading>" so that generic headings ("Examples") stay answerable.

Everything is deterministic: files are read in sorted order and every random choice is drawn from
a generator seeded by the page's id. Training manuals and held-out manuals are disjoint packages.
System manual pages (man1-man8, and their HTML copies such as ``django-admin``) and dictionaries
are never read.

Usage (after ``apt-get install`` of the packages below)::

    python -m metaembed.quickstart.docpages --out runs/docpages   # train.jsonl, validation.json.gz + the packaged held-out file
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator, Sequence

#: Manuals the model trains on (Debian packages and their HTML roots).
TRAIN_MANUALS = {
    "python3.11-doc": "/usr/share/doc/python3.11/html",
    "python-django-doc": "/usr/share/doc/python-django-doc/html",
}
#: Manuals only evaluation reads (other Python libraries' documentation).
HELD_OUT_MANUALS = {
    "python-flask-doc": "/usr/share/doc/python-flask-doc/html",
    "python-werkzeug-doc": "/usr/share/doc/python-werkzeug-doc/html",
    "python-jinja2-doc": "/usr/share/doc/python-jinja2-doc/html",
    "python-click-doc": "/usr/share/doc/python-click-doc/html",
    "python-requests-doc": "/usr/share/doc/python-requests-doc/html",
    "python-attr-doc": "/usr/share/doc/python-attr-doc/html",
    "python-pytest-doc": "/usr/share/doc/python-pytest-doc/html",
    "python-markdown-doc": "/usr/share/doc/python-markdown-doc/docs",
    "python-babel-doc": "/usr/share/doc/python-babel-doc/html",
    "python-setuptools-doc": "/usr/share/doc/python-setuptools-doc/html",
}
#: Files that are indexes, search pages, change logs or HTML copies of manual pages.
SKIPPED = re.compile(r"(^|/)(_[^/]*|genindex|py-modindex|modindex|search|404|changes?|changelog|history|"
                     r"whatsnew|release|releases|django-admin)[^/]*(\.html|/)", re.IGNORECASE)
_BLOCK_TAGS = {"p", "li", "dt", "dd", "pre", "h1", "h2", "h3", "h4", "th", "td", "caption"}
_SKIP_TAGS = {"script", "style", "nav", "footer", "header"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass
class Block:
    kind: str  # "heading" or "text" or "code"
    text: str


#: Ids of the main-content ``div`` in Sphinx themes that do not mark it ``role="main"`` (Django's).
_MAIN_IDS = {"yui-main"}


class _MainText(HTMLParser):
    """Blocks of the main content of a Sphinx HTML page: ``div[role=main]`` (or a ``div`` of :data:`_MAIN_IDS`,
    or of one of ``main_classes``, e.g. DocBook's ``sect1``)."""

    def __init__(self, main_classes: frozenset[str] = frozenset()) -> None:
        super().__init__(convert_charrefs=True)
        self._main_classes = main_classes
        self.blocks: list[Block] = []
        self._main_depth: int | None = None
        self._div_depth = 0
        self._skip = 0
        self._stack: list[str] = []
        self._buffer: list[str] = []
        self._headerlink = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "div":
            self._div_depth += 1
            if self._main_depth is None and (values.get("role") == "main" or values.get("id") in _MAIN_IDS
                                            or values.get("class") in self._main_classes):
                self._main_depth = self._div_depth
        if tag in _SKIP_TAGS:
            self._skip += 1
        if tag == "a" and "headerlink" in (values.get("class") or ""):
            self._headerlink += 1
        if tag in _BLOCK_TAGS:
            self._flush()
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self._flush()
            if self._stack and self._stack[-1] == tag:
                self._stack.pop()
        if tag in _SKIP_TAGS and self._skip:
            self._skip -= 1
        if tag == "a" and self._headerlink:
            self._headerlink -= 1
        if tag == "div":
            if self._main_depth == self._div_depth:
                self._flush()
                self._main_depth = -1  # main content finished
            self._div_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._main_depth is None or self._main_depth < 0 or self._skip or self._headerlink:
            return
        self._buffer.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._buffer).split())
        self._buffer = []
        if not text:
            return
        tag = self._stack[-1] if self._stack else "p"
        kind = "heading" if tag in ("h1", "h2", "h3", "h4") else "code" if tag == "pre" else "text"
        self.blocks.append(Block(kind, text))


def read_blocks(path: Path, main_classes: frozenset[str] = frozenset()) -> list[Block]:
    """The main-content blocks of one HTML file, in reading order; ``main_classes``: classes of the
    ``div`` that holds the main content where it is not Sphinx's (DocBook: ``sect1``, ``chapter`` ...)."""
    parser = _MainText(main_classes)
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser.blocks


@dataclass
class Page:
    """One searchable page and the queries that target parts of it."""

    page_id: str
    manual: str
    title: str
    text: str
    queries: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)


def _words(text: str) -> int:
    return len(text.split())


def _pages_of_file(blocks: Sequence[Block], page_words: int) -> Iterator[list[Block]]:
    """Greedy pages: start at a heading once half full, never past ``page_words`` words."""
    current: list[Block] = []
    size = 0
    for block in blocks:
        if block.kind == "code":
            block = Block("code", " ".join(block.text.split()[:40]))
        words = _words(block.text)
        if words > page_words:  # a very long paragraph: keep its first sentences
            kept, count = [], 0
            for sentence in _SENTENCE.split(block.text):
                if count + _words(sentence) > page_words // 2:
                    break
                kept.append(sentence)
                count += _words(sentence)
            block, words = Block(block.kind, " ".join(kept) or block.text[:400]), max(count, 1)
        starts_section = block.kind == "heading" and size >= page_words // 2
        if current and (starts_section or size + words > page_words):
            yield current
            current, size = [], 0
        current.append(block)
        size += words
    if current and size >= page_words // 3:
        yield current


def _queries(blocks: list[Block], title: str, rng: random.Random, max_sentences: int) -> tuple[list[Block], list[tuple[str, str]]]:
    """Take up to ``max_sentences`` sentences out of the page's prose; add one heading query."""
    candidates = []
    for index, block in enumerate(blocks):
        if block.kind != "text" or index == 0:
            continue
        for sentence in _SENTENCE.split(block.text):
            if 8 <= _words(sentence) <= 40 and not sentence.rstrip().endswith(":"):
                candidates.append((index, sentence))
    chosen = rng.sample(candidates, min(max_sentences, len(candidates)))
    queries = [("sentence", sentence) for _, sentence in chosen]
    taken = {}
    for index, sentence in chosen:
        taken.setdefault(index, []).append(sentence)
    kept_blocks = []
    for index, block in enumerate(blocks):
        text = block.text
        for sentence in taken.get(index, []):
            text = text.replace(sentence, " ")
        text = " ".join(text.split())
        if text:
            kept_blocks.append(Block(block.kind, text))
    headings = [b.text for b in kept_blocks if b.kind == "heading" and _words(b.text) >= 3]
    if headings:
        queries.append(("heading", f"{title}: {rng.choice(headings)}"))
    return kept_blocks, queries


def manual_pages(manual: str, root: Path, page_words: int = 170, max_sentences: int = 2) -> list[Page]:
    """Every page of one manual (files in sorted order), with its queries."""
    pages: list[Page] = []
    for path in sorted(root.rglob("*.html")):
        relative = path.relative_to(root).as_posix()
        if SKIPPED.search(relative):
            continue
        blocks = read_blocks(path)
        if not blocks:
            continue
        title = next((b.text for b in blocks if b.kind == "heading"), path.stem)
        for number, chunk in enumerate(_pages_of_file(blocks, page_words)):
            page_id = f"{manual}/{relative}#{number}"
            rng = random.Random(hashlib.sha256(page_id.encode()).digest())
            kept, queries = _queries(chunk, title, rng, max_sentences)
            if not queries:
                continue
            text = "\n".join(b.text for b in kept)
            pages.append(Page(page_id, manual, title, text, queries))
    return pages


def collect(manuals: dict[str, str], max_pages: int | None, seed: int, held_back: int = 0) -> list[Page] | tuple[list[Page], list[Page]]:
    """Pages of several manuals; a seeded sample of ``max_pages`` when there are more.

    With ``held_back`` > 0, returns ``(pages, validation)``: ``held_back`` more pages drawn in the
    same sample and kept apart (disjoint from ``pages``), for choosing a recipe without touching
    the held-out manuals.
    """
    pages: list[Page] = []
    for manual, root in sorted(manuals.items()):
        if not Path(root).is_dir():
            raise SystemExit(f"{root} is missing: apt-get install {manual}")
        pages.extend(manual_pages(manual, Path(root)))
    wanted = None if max_pages is None else max_pages + held_back
    if wanted is not None and len(pages) > wanted:
        pages = random.Random(seed).sample(pages, wanted)
    elif held_back:
        pages = random.Random(seed).sample(pages, len(pages))
    validation = sorted(pages[len(pages) - held_back:], key=lambda p: p.page_id) if held_back else []
    pages = sorted(pages[:len(pages) - held_back] if held_back else pages, key=lambda p: p.page_id)
    return (pages, validation) if held_back else pages


def write_pairs(pages: Sequence[Page], path: Path) -> int:
    """The training pairs (``pairs`` format: query → its page), one per query; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for page in pages:
            for _, query in page.queries:
                handle.write(json.dumps({"query": query, "positive": page.text}) + "\n")
                count += 1
    return count


def beir_collection(pages: Sequence[Page]) -> dict:
    """A held-out collection as one JSON-ready dict: corpus, queries and qrels (BEIR fields)."""
    corpus = [{"_id": p.page_id, "title": "", "text": p.text} for p in pages]
    queries, qrels = [], []
    for page in pages:
        for number, (kind, text) in enumerate(page.queries):
            query_id = f"{page.page_id}?{kind}{number}"
            queries.append({"_id": query_id, "text": text, "kind": kind})
            qrels.append([query_id, page.page_id, 1])
    return {"corpus": corpus, "queries": queries, "qrels": qrels,
            "manuals": sorted({p.manual for p in pages})}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/docpages", help="output folder")
    parser.add_argument("--train-pages", type=int, default=2000)
    parser.add_argument("--validation-pages", type=int, default=300,
                        help="pages of the training manuals kept out of training, for choosing the recipe")
    parser.add_argument("--held-out-pages", type=int, default=500)
    parser.add_argument("--packaged", default="metaembed/quickstart/heldout_docs.json.gz",
                        help="where the held-out collection shipped with the package is written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    train, validation = collect(TRAIN_MANUALS, args.train_pages, args.seed, held_back=args.validation_pages)
    held_out = collect(HELD_OUT_MANUALS, args.held_out_pages, args.seed)
    pairs = write_pairs(train, out / "train.jsonl")
    collection = beir_collection(held_out)
    with gzip.GzipFile(out / "validation.json.gz", "wb", mtime=0) as handle:
        handle.write(json.dumps(beir_collection(validation), sort_keys=True).encode("utf-8"))
    packaged = Path(args.packaged)
    packaged.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(packaged, "wb", mtime=0) as handle:  # mtime 0: the same bytes every build
        handle.write(json.dumps(collection, sort_keys=True).encode("utf-8"))
    print(f"train: {len(train)} pages, {pairs} pairs -> {out / 'train.jsonl'}")
    print(f"validation: {len(validation)} pages of the training manuals -> {out / 'validation.json.gz'}")
    print(f"held out: {len(collection['corpus'])} pages, {len(collection['queries'])} queries -> {packaged}")


if __name__ == "__main__":
    main(sys.argv[1:])
