"""The replication's two real, offline tasks, written as training pairs and BEIR test folders.

* **glyphs** (text → image): Unicode character names → the character drawn by matplotlib's
  bundled DejaVu Sans font. Built by :mod:`metaembed.quickstart.data` (the frontdoor's data set;
  DejaVu fonts: Bitstream Vera licence + public domain changes; names: the Unicode Character
  Database, Unicode licence). Held out by character: a test name and its image never appear in
  training.
* **stdlib** (text → code): the summary paragraph of a Python standard-library docstring → the
  function's or class's qualified name and signature (``json.dumps(obj, *, skipkeys=False, ...)``),
  a small code-search task built with :mod:`inspect` over the running interpreter's standard
  library (Python Software Foundation License). Held out by *module*: no test function, and no
  function of a test module, is ever trained on.

Each task becomes ``<root>/<task>/train.jsonl`` (the training package's ``pairs`` format,
images relative to the task folder) and ``<root>/<task>/test/`` (the evaluation package's BEIR
layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``), so training and evaluation go
through the library's own loaders.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import random
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from metaembed.errors import InputError

TASKS = ("glyphs", "stdlib")

# Modules whose import opens windows, prints, starts a browser or is deprecated noise.
_SKIPPED_MODULES = frozenset(
    {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "lib2to3", "ensurepip",
     "venv", "pydoc_data", "test"}
)
_MAX_QUERY_WORDS = 40


@dataclass(frozen=True)
class Pair:
    """One retrieval pair: ``query`` text, the positive's id, text (or image path), and its group.

    ``group`` is the unit of the train/test split (the character for glyphs, the module for
    stdlib), so nothing of a held-out group leaks into training.
    """

    id: str
    query: str
    positive: str
    group: str
    is_image: bool = False


@dataclass(frozen=True)
class TaskFiles:
    """Where one built task lies and how big it is."""

    name: str
    folder: Path
    train_file: Path
    test_folder: Path
    num_train: int
    num_test: int
    source: str


def _summary(doc: str) -> str | None:
    """The first paragraph of a docstring that is prose, not a signature line; ``None`` if none."""
    for paragraph in re.split(r"\n\s*\n", doc.strip()):
        text = " ".join(paragraph.split())
        # C functions often start with their own signature, e.g. "sqrt(x)" or "dumps(obj) -> str"
        if not text or re.fullmatch(r"[\w.]+\(.*\)(\s*->.*)?", text):
            continue
        words = text.split()
        return " ".join(words[:_MAX_QUERY_WORDS])
    return None


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"


def _import_quietly(name: str) -> object | None:
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - platform-specific modules fail in many ways (ImportError, OSError, SystemExit)
        return None


def _documented_members(module: object, module_name: str) -> Iterable[tuple[str, object]]:
    """Public functions and classes defined in ``module`` and the public methods of those classes."""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isclass(obj):
            yield name, obj
            for method_name, method in sorted(vars(obj).items()):
                if not method_name.startswith("_") and (inspect.isfunction(method) or inspect.ismethoddescriptor(method)):
                    yield f"{name}.{method_name}", method
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield name, obj


def stdlib_pairs(modules: Sequence[str] | None = None) -> list[Pair]:
    """(docstring summary → ``module.qualname(signature)``) pairs over the standard library.

    ``modules`` restricts the scan to those module names (default: every importable public
    module of :data:`sys.stdlib_module_names`).

    Pairs whose summary is shared by several objects (overloads, aliases, inherited boiler-plate)
    are dropped: their relevance would be ambiguous. Sorted by id, so the list is reproducible for a
    given Python version.
    """
    by_summary: dict[str, list[Pair]] = {}
    names = modules if modules is not None else sys.stdlib_module_names
    for module_name in sorted(n for n in names if not n.startswith("_") and n not in _SKIPPED_MODULES):
        module = _import_quietly(module_name)
        if module is None:
            continue
        for qualname, obj in _documented_members(module, module_name):
            doc = inspect.getdoc(obj)
            summary = _summary(doc) if doc else None
            if summary is None:
                continue
            target = f"{module_name}.{qualname}{_signature(obj)}"
            pair = Pair(id=f"{module_name}.{qualname}", query=summary, positive=target, group=module_name)
            by_summary.setdefault(summary.lower(), []).append(pair)
    return sorted((ps[0] for ps in by_summary.values() if len(ps) == 1), key=lambda p: p.id)


def glyph_pairs() -> list[Pair]:
    """(Unicode name → glyph id) pairs; the image is rendered when the task is written."""
    from experiments.glyph_data import load_glyphs

    return [Pair(id=g.id, query=g.text, positive=g.id, group=g.id, is_image=True) for g in load_glyphs()]


def split_by_group(pairs: Sequence[Pair], test_fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Split ``pairs`` into (train, test) by whole groups, about ``test_fraction`` of pairs in test.

    Groups are shuffled with ``seed`` and taken into test until the fraction is reached, so no
    group has pairs on both sides.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.group, []).append(pair)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    test: list[Pair] = []
    target = test_fraction * len(pairs)
    taken: set[str] = set()
    for group in order:
        if len(test) >= target:
            break
        test.extend(groups[group])
        taken.add(group)
    train = [p for p in pairs if p.group not in taken]
    return train, test


def _subsample(pairs: list[Pair], limit: int | None, seed: int) -> list[Pair]:
    if limit is None or limit >= len(pairs):
        return pairs
    return sorted(random.Random(seed).sample(pairs, limit), key=lambda p: p.id)


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _render_images(pairs: Sequence[Pair], folder: Path, image_size: int) -> None:
    """Draw each glyph white on black: a blank patch is then the zero vector, so the (frozen,
    randomly initialised) patch embedding maps ink, not the white background, to what differs."""
    from PIL import ImageOps

    from experiments.glyph_data import Glyph, render

    folder.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        path = folder / f"{pair.positive}.png"
        if not path.is_file():
            codepoint = int(pair.positive.removeprefix("U+"), 16)
            ImageOps.invert(render(Glyph(codepoint, pair.query), size=image_size)).save(path)


def _positive_value(pair: Pair) -> str | dict:
    return {"image": f"images/{pair.positive}.png"} if pair.is_image else pair.positive


def write_task(
    name: str,
    root: str | Path,
    *,
    test_fraction: float = 0.1,
    max_train: int | None = None,
    max_test: int | None = None,
    image_size: int = 32,
    split_seed: int = 0,
) -> TaskFiles:
    """Build task ``name`` (``"glyphs"`` or ``"stdlib"``) under ``root/name`` and describe it.

    ``max_train`` / ``max_test`` keep a seeded subset of each side (after the split, so the
    split itself does not depend on them).
    """
    if name == "glyphs":
        pairs, source = glyph_pairs(), "Unicode names → DejaVu Sans glyph images (matplotlib fonts, unicodedata)"
    elif name == "stdlib":
        pairs = stdlib_pairs()
        source = f"Python {sys.version_info.major}.{sys.version_info.minor} stdlib docstring summary → qualified name + signature"
    else:
        raise InputError(f"unknown task {name!r}; expected one of {TASKS}")
    train, test = split_by_group(pairs, test_fraction, split_seed)
    train, test = _subsample(train, max_train, split_seed), _subsample(test, max_test, split_seed)
    folder = Path(root) / name
    if pairs[0].is_image:
        _render_images(train + test, folder / "images", image_size)
    _write_jsonl(folder / "train.jsonl", ({"query": p.query, "positive": _positive_value(p)} for p in train))
    test_folder = folder / "test"
    _write_jsonl(test_folder / "queries.jsonl", ({"_id": f"q:{p.id}", "text": p.query} for p in test))
    _write_jsonl(
        test_folder / "corpus.jsonl",
        ({"_id": p.id, "image": f"../images/{p.positive}.png"} if p.is_image else {"_id": p.id, "text": p.positive}
         for p in test),
    )
    (test_folder / "qrels").mkdir(parents=True, exist_ok=True)
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q:{p.id}\t{p.id}\t1" for p in test]
    (test_folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return TaskFiles(name, folder, folder / "train.jsonl", test_folder, len(train), len(test), source)


__all__ = ["TASKS", "Pair", "TaskFiles", "stdlib_pairs", "glyph_pairs", "split_by_group", "write_task"]
