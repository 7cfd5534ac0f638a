"""Reproducible benchmark data: synthetic multi-vector blocks, and real passages to embed.

:class:`SyntheticCorpus` is the scoring benchmark's data:

Candidates have ``R_c`` unit vectors drawn around a few shared topic centres
(so scores have structure, unlike pure noise); queries are noisy copies of some
candidates' vectors, so each query has a true source candidate. The data are
generated block by block from fixed seeds: any block can be regenerated without
holding the whole corpus in memory (N = 20,000 x 64 x 2048 fp32 is 10.5 GB).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

GENERATION_BLOCK = 1024
_TOPICS = 256
_NOISE = 0.9
_QUERY_NOISE = 0.6


@dataclass(frozen=True)
class SyntheticCorpus:
    """``num_candidates`` candidates of ``num_vectors`` vectors of dimension ``dim``, seeded."""

    num_candidates: int
    dim: int
    num_vectors: int = 64
    seed: int = 0

    def _topics(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        topics = torch.randn(_TOPICS, self.dim, generator=generator)
        return topics / topics.norm(dim=-1, keepdim=True)

    def block(self, index: int) -> torch.Tensor:
        """fp32 ``(n, R_c, D)`` unit vectors of candidates ``index*GENERATION_BLOCK ...``."""
        start = index * GENERATION_BLOCK
        n = min(GENERATION_BLOCK, self.num_candidates - start)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        which = torch.randint(0, _TOPICS, (n, self.num_vectors), generator=generator)
        noise = torch.randn(n, self.num_vectors, self.dim, generator=generator) * (_NOISE / self.dim**0.5)
        values = self._topics()[which] + noise
        return values / values.norm(dim=-1, keepdim=True)

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first candidate, block)`` for the whole corpus, in order."""
        for index in range(-(-self.num_candidates // GENERATION_BLOCK)):
            yield index * GENERATION_BLOCK, self.block(index)

    def queries(self, num_queries: int, num_vectors: int = 16) -> tuple[torch.Tensor, list[int]]:
        """fp32 ``(Q, R_q, D)`` queries, each a noisy copy of ``R_q`` vectors of one candidate, and those candidates."""
        generator = torch.Generator().manual_seed(self.seed + 7)
        first = self.block(0)
        sources = torch.randint(0, first.shape[0], (num_queries,), generator=generator).tolist()
        picked = torch.stack([first[s, torch.randperm(self.num_vectors, generator=generator)[:num_vectors]] for s in sources])
        noisy = picked + torch.randn(picked.shape, generator=generator) * (_QUERY_NOISE / self.dim**0.5)
        return noisy / noisy.norm(dim=-1, keepdim=True), sources


#: Manuals the real-passage corpus reads (Debian documentation packages; no system manual pages and
#: no dictionaries, which are held out): name, HTML root, and the classes of the ``div`` that holds
#: the main text (empty: Sphinx's ``role=main``). PostgreSQL's reference pages (``refentry``: copies
#: of its manual pages) hold no such ``div`` and give nothing.
PASSAGE_MANUALS = (
    ("python3.11-doc", "/usr/share/doc/python3.11/html", frozenset()),
    ("python-django-doc", "/usr/share/doc/python-django-doc/html", frozenset()),
    ("postgresql-doc-15", "/usr/share/doc/postgresql-doc-15/html",
     frozenset({"sect1", "chapter", "part", "appendix", "preface", "glossary"})),
)


@dataclass(frozen=True)
class ManualPassages:
    """Real text to embed: every ``words``-word window (``stride`` words apart) of the manuals' main
    text, file by file in sorted order (a window of under ``words // 2`` words at a file's end is
    dropped), the first ``limit`` of them; and queries: the headings of
    at least three words, as written. Deterministic: the same packages give the same rows anywhere."""

    words: int = 40
    stride: int = 23
    limit: int = 100_000
    manuals: tuple[tuple[str, str, frozenset], ...] = PASSAGE_MANUALS

    def _files(self) -> Iterator[tuple[str, Path, Path, frozenset]]:
        from metaembed.quickstart.docpages import SKIPPED

        for manual, root, classes in self.manuals:
            if not Path(root).is_dir():
                raise FileNotFoundError(f"{root} is missing: apt-get install {manual}")
            for path in sorted(Path(root).rglob("*.html")):
                if not SKIPPED.search(str(path.relative_to(root))):
                    yield manual, path.relative_to(root).with_suffix(""), path, classes

    def rows(self) -> tuple[list[dict], list[str]]:
        """``[{"id", "text"}]`` passages (at most ``limit``; ids ``manual/file#first word``) and the
        distinct headings of the files they come from."""
        from metaembed.quickstart.docpages import read_blocks

        passages: list[dict] = []
        headings: list[str] = []
        for manual, name, path, classes in self._files():
            blocks = read_blocks(path, classes)
            words = " ".join(block.text for block in blocks).split()
            headings.extend(b.text for b in blocks if b.kind == "heading" and len(b.text.split()) >= 3)
            for start in range(0, max(1, len(words) - self.words + self.stride), self.stride):
                window = words[start:start + self.words]
                if len(window) >= self.words // 2:
                    passages.append({"id": f"{manual}/{name}#{start}", "text": " ".join(window)})
                if len(passages) == self.limit:
                    return passages, _unique(headings)
        return passages, _unique(headings)

    def write(self, folder: Path, num_queries: int = 512, seed: int = 0) -> tuple[Path, Path]:
        """``folder/passages.jsonl`` (the rows) and ``folder/queries.jsonl`` (``num_queries`` headings
        drawn with ``seed``, one ``{"text"}`` each); returns both paths."""
        passages, headings = self.rows()
        queries = random.Random(seed).sample(headings, min(num_queries, len(headings)))
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / "passages.jsonl", folder / "queries.jsonl"
        for path, rows in zip(paths, (passages, [{"text": text} for text in queries])):
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return paths


def _unique(texts: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        seen.setdefault(re.sub(r"\s+", " ", text).strip(), None)
    return list(seen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the real-passage corpus: passages.jsonl and queries.jsonl.")
    parser.add_argument("--out", type=Path, required=True, help="folder for passages.jsonl and queries.jsonl")
    parser.add_argument("--limit", type=int, default=ManualPassages.limit, help="passages at most")
    parser.add_argument("--queries", type=int, default=512, help="heading queries drawn")
    args = parser.parse_args(argv)
    paths = ManualPassages(limit=args.limit).write(args.out, args.queries)
    print(" ".join(str(path) for path in paths))


__all__ = ["SyntheticCorpus", "ManualPassages", "PASSAGE_MANUALS", "GENERATION_BLOCK"]


if __name__ == "__main__":
    main()
