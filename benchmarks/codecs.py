"""Storage codecs on real embeddings: bytes per vector against top-10 overlap with exact fp32, per budget.

The shipped model (``metaembed-minilm``: 384-d, 16 page vectors) encodes once, cached under
``runs/codecs/<hash of the model's files>/`` (``--cache``):

* the packaged held-out collection (500 pages of ten Python libraries' manuals, 1,098 queries
  with qrels: :mod:`metaembed.quickstart.collection`), and
* the validation collection (``--corpus validation``): the 300 pages of the training manuals
  that training kept out (``runs/docpages/validation.json.gz``, written by
  :mod:`metaembed.quickstart.docpages`), where codecs and their parameters are chosen before
  the held-out pages are looked at, and
* ``--extra-pages`` pages of the *training* manual python3.11-doc
  (:mod:`metaembed.quickstart.docpages`), added to the held-out pages as a larger corpus
  (distractors: the held-out qrels still score nDCG@10 on it).

For each corpus, codec and budget it prints bytes per stored vector (and the ratio to float16),
what a search at the budget reads against float16's (the same ratio, but for ``ppq*``, which
spends more of an item's bytes on its first vectors: :mod:`metaembed.index.codecs.predictive`), the
top-10 overlap with exact fp32 search (the fraction of fp32's top 10 a codec's top 10 holds,
averaged over queries), nDCG@10 beside fp32's (a trained codec twice: with codebooks fit on the
corpus it codes, and on unseen vectors, codebooks fit on one half of the pages coding the other:
the target is judged on the latter), the time to add the corpus (a trained codec's training and encoding) and the search
latency relative to float16 on the same index sizes. Every search goes through
:class:`~metaembed.index.MultiVectorIndex` (the codec's own scoring path)::

    nice -n 19 python -m benchmarks.codecs                      # encodes once, then measures
    nice -n 19 python -m benchmarks.codecs --out benchmarks/results/codecs-zen3-avx2
    nice -n 19 python -m benchmarks.codecs --corpus validation   # where a codec is chosen
    nice -n 19 python -m benchmarks.codecs --index runs/approximate/index --queries runs/approximate/queries.jsonl

``--index`` measures at scale instead: the vectors an index of the built-in model stores (e.g.
the 100k passages of ``make bench-approximate``) and its queries, with no qrels (overlap only).
A trained codec there learns its codebooks from ``--fit-pages`` pages drawn at random from the
index (what a large first add gives it) and codes the others, which are the corpus every codec
and fp32 search: every coded vector is unseen, as in a live index after its first batch.

Latency is taken on whatever machine runs it; the committed file says if that machine was shared.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODEL = "metaembed-minilm"
BUDGETS = ("1,1", "2,4", "4,8", "8,16")
K = 10


def model_key() -> str:
    """A short hash of the shipped model's files: the cache of encoded vectors is kept per weights."""
    import hashlib

    import metaembed

    folder = Path(metaembed.__file__).resolve().parent / "pretrained" / MODEL
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _pages_text(collection: dict[str, Any]) -> list[str]:
    return [page["text"] for page in collection["corpus"]]


def _jobs(prefix: str, collection: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{prefix}_pages": lambda m: m.encode_candidates(_pages_text(collection), batch_size=16),
        f"{prefix}_queries": lambda m: m.encode_queries([q["text"] for q in collection["queries"]], batch_size=64),
    }


def encode_all(cache: Path, extra_pages: int, validation: Path | None = None) -> None:
    """Encode into ``cache`` (once) the held-out pages and queries, or the ``validation`` collection's
    instead, and ``extra_pages`` python3.11-doc pages."""
    from metaembed.model import MetaEmbedModel
    from metaembed.quickstart import docpages
    from metaembed.quickstart.collection import load_collection

    cache.mkdir(parents=True, exist_ok=True)
    model = None
    if validation is not None:
        jobs = _jobs("validation", load_collection(validation))
    else:
        jobs = _jobs("heldout", load_collection())
    if extra_pages:
        manual = {"python3.11-doc": docpages.TRAIN_MANUALS["python3.11-doc"]}
        pages = docpages.collect(manual, extra_pages, seed=0)
        jobs[f"python_pages_{extra_pages}"] = lambda m: m.encode_candidates([p.text for p in pages], batch_size=16)
    for name, job in jobs.items():
        path = cache / f"{name}.npy"
        if path.exists():
            continue
        if model is None:
            model = MetaEmbedModel.from_pretrained(MODEL)
        started = time.perf_counter()
        vectors = job(model)
        np.save(path, vectors.numpy().astype(np.float32))
        print(f"encoded {name}: {tuple(vectors.shape)} in {time.perf_counter() - started:.0f}s", flush=True)


def _load(cache: Path, extra_pages: int, which: str = "both", validation: Path | None = None) -> dict[str, Any]:
    from metaembed.quickstart.collection import load_collection

    prefix = "validation" if which == "validation" else "heldout"
    collection = load_collection(validation) if which == "validation" else load_collection()
    pages = torch.from_numpy(np.load(cache / f"{prefix}_pages.npy"))
    queries = torch.from_numpy(np.load(cache / f"{prefix}_queries.npy"))
    page_ids = [page["_id"] for page in collection["corpus"]]
    qrels: dict[str, dict[str, int]] = {}
    for query_id, page_id, grade in collection["qrels"]:
        qrels.setdefault(query_id, {})[page_id] = int(grade)
    title = "validation" if which == "validation" else "held-out"
    corpora = {f"{title} ({len(page_ids)} pages)": (page_ids, pages)} if which != "large" else {}
    if extra_pages and which != "heldout":
        extra = torch.from_numpy(np.load(cache / f"python_pages_{extra_pages}.npy"))
        ids = page_ids + [f"python3.11-doc/{i}" for i in range(extra.shape[0])]
        corpora[f"held-out + {extra.shape[0]} python3.11-doc pages"] = (ids, torch.cat([pages, extra]))
    return {"queries": queries, "query_ids": [q["_id"] for q in collection["queries"]], "qrels": qrels,
            "corpora": corpora}


def _load_index(path: Path, queries: Path, field: str, max_queries: int, fit_pages: int) -> dict[str, Any]:
    """The stored vectors of the index at ``path`` (fp32 ``(N, R, D)``) and ``queries`` encoded by its model.

    ``fit_pages`` pages, drawn at random (seeded), are set apart as the trained codecs' fitting
    sample (``data["fit"]``); the other pages are the corpus.
    """
    from benchmarks.coarse_to_fine import read_queries
    from metaembed.retriever import Retriever

    retriever = Retriever.open(path)
    try:
        batches = list(retriever.index.export(batch=8192))  # sequential reads of the stored vectors
        ids = [item for batch_ids, _ in batches for item in batch_ids]
        pages = torch.cat([vectors for _, vectors in batches])
        del batches
        if len(ids) <= fit_pages:
            raise SystemExit(f"the index at {path} holds {len(ids)} items: fewer than --fit-pages {fit_pages} + 1")
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0)).tolist()
        fit, rest = sorted(order[:fit_pages]), sorted(order[fit_pages:])
        encoded = retriever.model.encode_queries(read_queries(queries, field, max_queries), show_progress=False)
    finally:
        retriever.index.close()
    corpus = f"{len(rest):,} passages of {path} (codebooks fit on {fit_pages:,} other passages of it)"
    return {"queries": encoded, "query_ids": [f"q{i}" for i in range(encoded.shape[0])], "qrels": {},
            "corpora": {corpus: ([ids[i] for i in rest], pages[rest])},
            "fit": ([ids[i] for i in fit], pages[fit])}


def _search(index: Any, queries: torch.Tensor, budget: Any, repeats: int) -> tuple[list[list[str]], dict, float]:
    """Top-10 ids and scores per query, and the best of ``repeats`` wall times of the whole batch."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        hits = index.search_batch(queries[:, : budget.r_q].contiguous(), K, budget)
        best = min(best, time.perf_counter() - started)
    return [[hit.id for hit in row] for row in hits], hits, best


def _ndcg(hits: list, query_ids: list[str], qrels: dict) -> float | None:
    """nDCG@10 of ``hits``; ``None`` without qrels (an index's own queries at scale)."""
    if not qrels:
        return None
    from metaembed.evaluation.metrics import retrieval_metrics

    run = {qid: {hit.id: float(hit.score) for hit in row} for qid, row in zip(query_ids, hits)}
    return retrieval_metrics(qrels, run, k_values=[K])[f"ndcg@{K}"]


def _unseen_indexes(codec: str, ids: list[str], pages: torch.Tensor) -> list[Any]:
    """Two indexes that together hold the corpus, each vector coded by codebooks that never saw it.

    Fold ``f`` learns its codebooks from the pages ``f, f + 2, ...`` (its first add), adds the
    other half, then deletes its own pages: what a live index does with every vector added after
    its first batch. Scores from the two are comparable (exact MaxSim over decoded vectors), so
    their merged top 10 is a search of the whole corpus with unseen codes only.
    """
    from metaembed.index import MultiVectorIndex

    folds = []
    for fold in (0, 1):
        mine = list(range(fold, len(ids), 2))
        other = list(range(1 - fold, len(ids), 2))
        index = MultiVectorIndex.create(None, dim=pages.shape[-1], num_vectors=pages.shape[1], dtype=codec)
        index.add([ids[i] for i in mine], pages[mine])
        index.add([ids[i] for i in other], pages[other])
        index.delete([ids[i] for i in mine])
        index.compact()
        folds.append(index)
    return folds


def _merged_search(indexes: list[Any], queries: torch.Tensor, budget: Any) -> tuple[list[list[str]], list]:
    """Top-10 ids and hits per query over several indexes, merged by score."""
    parts = [index.search_batch(queries[:, : budget.r_q].contiguous(), K, budget) for index in indexes]
    hits = [sorted((hit for part in rows for hit in part), key=lambda hit: -hit.score)[:K] for rows in zip(*parts)]
    return [[hit.id for hit in row] for row in hits], hits


def measure(data: dict[str, Any], codecs: list[str], repeats: int) -> list[dict[str, Any]]:
    """One row per corpus, codec and budget (fp32 is the reference every overlap is taken against).

    A trained codec is measured twice: with codebooks learnt from the corpus it codes (one add of
    everything: a static index, whose codes have seen their own vectors) and on unseen vectors
    (:func:`_unseen_indexes`: codebooks learnt from one half of the pages code the other half),
    which is what every vector added after an index's first batch gets. The target is judged on
    the unseen overlap. With ``data["fit"]`` (``(ids, pages)`` outside every corpus) a trained codec
    instead learns from those pages, adds the corpus, then drops them: one index whose codes are
    all unseen, its overlap both columns' value.
    """
    from metaembed.budget import Budget
    from metaembed.index import MultiVectorIndex
    from metaembed.index.codecs import get_codec
    from benchmarks.measure import overlap

    rows = []
    queries = data["queries"]
    for corpus, (ids, pages) in data["corpora"].items():
        dim, num_vectors = pages.shape[-1], pages.shape[1]
        reference: dict[str, tuple[list[list[str]], float]] = {}
        fp16_time: dict[str, float] = {}
        for name in ["float32", "float16"] + [c for c in codecs if c not in ("float32", "float16")]:
            codec = get_codec(name)
            index = MultiVectorIndex.create(None, dim=dim, num_vectors=num_vectors, dtype=name)
            fit = data.get("fit") if codec.trained else None
            unseen = _unseen_indexes(name, ids, pages) if codec.trained and fit is None else []
            try:
                started = time.perf_counter()
                if fit is not None:
                    index.add(*fit)  # the codebooks are learnt from the fitting sample alone
                index.add(ids, pages)  # a trained codec learns its codebooks here, then encodes the corpus
                build_seconds = time.perf_counter() - started
                if fit is not None:
                    index.delete(fit[0])
                    index.compact()
                for text in BUDGETS:
                    budget = Budget.parse(text)
                    top, hits, seconds = _search(index, queries, budget, repeats)
                    ndcg = _ndcg(hits, data["query_ids"], data["qrels"])
                    if name == "float32":
                        reference[text] = (top, ndcg)
                    if name == "float16":
                        fp16_time[text] = seconds
                    per_vector = index.memory_bytes() // (len(index) * num_vectors)  # stored bytes a vector
                    row = {
                        "corpus": corpus, "pages": len(ids), "codec": name, "budget": text,
                        "bytes_per_vector": per_vector, "ratio_to_float16": per_vector / (2 * dim),
                        "read_vs_float16": index.memory_bytes(budget) / (len(index) * budget.r_c * 2 * dim),
                        "overlap@10": overlap(top, reference[text][0]), "ndcg@10": ndcg,
                        "ndcg@10_float32": reference[text][1], "build_seconds": build_seconds,
                        "search_seconds": seconds,
                        "latency_vs_float16": seconds / fp16_time[text] if text in fp16_time else None,
                    }
                    if fit is not None:
                        row["overlap@10_unseen"], row["ndcg@10_unseen"] = row["overlap@10"], ndcg
                    if unseen:
                        unseen_top, unseen_hits = _merged_search(unseen, queries, budget)
                        row["overlap@10_unseen"] = overlap(unseen_top, reference[text][0])
                        row["ndcg@10_unseen"] = _ndcg(unseen_hits, data["query_ids"], data["qrels"])
                    rows.append(row)
                    print(_line(rows[-1]), flush=True)
            finally:
                for each in [index, *unseen]:
                    each.close()
    return rows


def _judged(row: dict[str, Any]) -> float:
    """The overlap the target is judged on: unseen vectors' where measured (trained codecs), else the only one."""
    return row.get("overlap@10_unseen", row["overlap@10"])


def _build(row: dict[str, Any]) -> float:
    """Seconds to add the corpus (training included); rows of older files hold the training time alone."""
    return row.get("build_seconds", row.get("train_seconds", 0.0))


def _line(row: dict[str, Any]) -> str:
    latency = "" if row["latency_vs_float16"] is None else f"{row['latency_vs_float16']:.2f}x"
    return (f"{row['codec']:>9} {row['budget']:>5} {row['bytes_per_vector']:>6} B {row['ratio_to_float16']:>6.3f} "
            f"{_number(row.get('read_vs_float16')):>6} "
            f"{row['overlap@10']:>8.3f} {_unseen(row, 'overlap@10'):>8} {_number(row['ndcg@10']):>7} "
            f"{_unseen(row, 'ndcg@10'):>8} {_number(row['ndcg@10_float32']):>6} {_build(row):>6.1f}s {latency:>8}")


def _unseen(row: dict[str, Any], key: str) -> str:
    return _number(row.get(f"{key}_unseen"))


def _number(value: float | None) -> str:
    """A measured fraction to three places; a dash where none was measured."""
    return "—" if value is None else f"{value:.3f}"


HEADER = (f"{'codec':>9} {'budget':>5} {'bytes/vec':>8} {'/fp16':>6} {'read':>6} {'overlap':>8} {'unseen':>8} {'nDCG@10':>7} "
          f"{'unseen':>8} {'fp32':>6} "
          f"{'build':>7} {'latency':>8}")


def verdict(rows: list[dict[str, Any]], ratio: float = 1 / 8, target: float = 0.95) -> list[str]:
    """Per corpus: whether some codec at <= ``ratio`` of float16 keeps overlap >= ``target`` at every budget."""
    lines = []
    for corpus in dict.fromkeys(row["corpus"] for row in rows):
        mine = [row for row in rows if row["corpus"] == corpus]
        worst: dict[str, float] = {}
        for row in mine:
            worst[row["codec"]] = min(worst.get(row["codec"], 1.0), _judged(row))
        small = {codec: value for codec, value in worst.items()
                 if next(r for r in mine if r["codec"] == codec)["ratio_to_float16"] <= ratio + 1e-9}
        best = max(small, key=small.get) if small else None
        met = best is not None and small[best] >= target
        lines.append(f"{corpus}: <= 1/{round(1 / ratio)} of float16 with overlap >= {target} at every budget "
                     "(trained codecs: on unseen vectors): "
                     f"{'MET' if met else 'NOT met'}" + (f" (best {best}: worst-budget overlap {small[best]:.3f})" if best else ""))
        for codec, value in worst.items():
            share = next(r for r in mine if r["codec"] == codec)["ratio_to_float16"]
            lines.append(f"  {codec:>9}: {share:.3f} of float16, worst-budget overlap {value:.3f}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    out = [f"# Storage codecs on real embeddings ({report['model']})", "",
           f"Machine: {report['machine']}. {report['latency_note']}", "",
           f"Command: `{report['command']}`", ""]
    for corpus in dict.fromkeys(row["corpus"] for row in report["rows"]):
        out += [f"## {corpus}", "",
                "| codec | budget | bytes/vector | of float16 | read at the budget, of float16 | top-10 overlap with fp32 "
                "| overlap, unseen vectors | nDCG@10 | nDCG@10, unseen | fp32 nDCG@10 | build (train + encode) | latency vs float16 |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in report["rows"]:
            if row["corpus"] != corpus:
                continue
            latency = "—" if row["latency_vs_float16"] is None else f"{row['latency_vs_float16']:.2f}×"
            out.append(f"| {row['codec']} | {row['budget']} | {row['bytes_per_vector']} | {row['ratio_to_float16']:.3f} "
                       f"| {_number(row.get('read_vs_float16'))} | {row['overlap@10']:.3f} | {_unseen(row, 'overlap@10')} | {_number(row['ndcg@10'])} "
                       f"| {_unseen(row, 'ndcg@10')} | {_number(row['ndcg@10_float32'])} "
                       f"| {_build(row):.1f} s | {latency} |")
        out.append("")
    out += ["## Target", "", *[f"    {line}" for line in report["verdict"]], ""]
    if report.get("tried"):
        tried = report["tried"]
        out += [f"## Other quantisers tried ({tried['corpus']})", "", tried["note"], "",
                "| method | bytes/vector | " + " | ".join(f"overlap {b}" for b in report["budgets"]) + " | worst |",
                "|---|---|" + "---|" * (len(report["budgets"]) + 1)]
        for method in tried["methods"]:
            values = [method["overlap@10"][b] for b in report["budgets"]]
            out.append(f"| {method['method']} | {method['bytes_per_vector']} | "
                       + " | ".join(f"{v:.3f}" for v in values) + f" | {min(values):.3f} |")
        out.append("")
    return "\n".join(out)


def merged_rows(paths: list[Path], measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of earlier ``--out`` JSON files, less those of a (corpus, codec) this run measured again."""
    fresh = {(row["corpus"], row["codec"]) for row in measured}
    rows = [row for path in paths for row in json.loads(path.read_text())["rows"]]
    return [row for row in rows if (row["corpus"], row["codec"]) not in fresh]


def main(argv: list[str] | None = None) -> None:
    from benchmarks.scoring import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/codecs"), help="where the encoded vectors are kept")
    parser.add_argument("--extra-pages", type=int, default=3000, help="python3.11-doc pages added as a larger corpus")
    parser.add_argument("--codecs", default="bfloat16,int8,pq4,pq2,apq2,pq1", help="codecs beside float32 and float16")
    parser.add_argument("--corpus", choices=("both", "heldout", "large", "validation"), default="both",
                        help="measure the held-out pages, the larger corpus, both, or the validation pages "
                             "(where codecs are chosen; see --validation)")
    parser.add_argument("--validation", type=Path, default=Path("runs/docpages/validation.json.gz"),
                        help="the validation collection (python -m metaembed.quickstart.docpages --out runs/docpages)")
    parser.add_argument("--index", type=Path,
                        help="measure the vectors this index stores instead of the page collections (needs --queries)")
    parser.add_argument("--queries", type=Path, help="with --index: JSONL of queries, encoded by the index's model")
    parser.add_argument("--field", default="text", help="with --index: the queries' text field")
    parser.add_argument("--max-queries", type=int, default=512, help="with --index: queries used, evenly spread")
    parser.add_argument("--fit-pages", type=int, default=1024,
                        help="with --index: pages set apart to fit trained codecs (1,024 x 16 vectors: pq's whole sample)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="rows of earlier --out JSON files to put beside this run's in OUT (another corpus)")
    parser.add_argument("--tried", type=Path,
                        help="a JSON file {corpus, note, methods: [{method, bytes_per_vector, overlap@10: {budget: value}}]} "
                             "of quantisers measured outside the index (scratch runs), shown in OUT.md")
    parser.add_argument("--repeats", type=int, default=3, help="timed searches per codec and budget (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-machine", action="store_true", help="say in the results that latency was taken on a loaded machine")
    parser.add_argument("--out", help="write OUT.json and OUT.md; {cpu} becomes the CPU class and kernel ISA, e.g. zen3-avx2")
    args = parser.parse_args(argv)
    if args.out:
        from benchmarks.scoring import cpu_class
        from metaembed import native

        args.out = Path(args.out.replace("{cpu}", f"{cpu_class()}-{native.isa() or 'blas'}"))
    torch.set_num_threads(args.threads)
    args.cache = args.cache / model_key()  # vectors of other weights are never reused
    validation = args.validation if args.corpus == "validation" else None
    if validation is not None and not validation.is_file():
        raise SystemExit(f"no validation collection at {validation}: write it with "
                         "`python -m metaembed.quickstart.docpages --out runs/docpages` (30 s), or pass --validation")
    if args.index is not None:
        if args.queries is None or not args.queries.is_file():
            raise SystemExit(f"--index needs --queries, a JSONL file of queries (got {args.queries})")
        data = _load_index(args.index, args.queries, args.field, args.max_queries, args.fit_pages)
    else:
        extra = args.extra_pages if args.corpus in ("both", "large") else 0
        encode_all(args.cache, extra, validation)
        data = _load(args.cache, extra, args.corpus, validation)
    print(HEADER)
    measured = measure(data, [c for c in args.codecs.split(",") if c], args.repeats)
    rows = merged_rows(args.merge, measured) + measured
    lines = verdict(rows)
    print("\n".join(lines))
    if args.out:
        report = {
            "model": MODEL, "weights": model_key(), "rows": rows, "verdict": lines, "budgets": list(BUDGETS),
            "machine": f"{cpu_description()}, {torch.get_num_threads()} threads",
            "latency_note": ("Train and latency are wall times on a SHARED, loaded machine (this process got a few % "
                             "of a core): they say nothing about the codecs; rerun on a quiet machine for them. Rows merged "
                             "from an earlier file (--merge) keep that file's timings (the codec's training alone)."
                             if args.shared_machine else "Latency: best of the repeats on this machine."),
            "tried": json.loads(args.tried.read_text()) if args.tried else None,
            "command": "python -m benchmarks.codecs " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
