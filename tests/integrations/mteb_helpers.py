"""A local MTEB retrieval task built from rows in memory, in MTEB's own format (no download)."""

from __future__ import annotations

from typing import Any


def local_task(docs: list[dict[str, Any]], queries: list[dict[str, Any]], qrels: dict[str, dict[str, int]]) -> Any:
    """An ``AbsTaskRetrieval`` over BEIR-style rows (``_id``, ``title``/``text``, ``image`` as a PIL image)."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    images = any("image" in d for d in docs)

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="MetaEmbedLocalRetrieval", description="A local BEIR-style folder.", reference=None,
            type="Retrieval", category="t2i" if images else "t2t", modalities=["text", "image"] if images else ["text"],
            eval_splits=["test"], eval_langs=["eng-Latn"], main_score="ndcg_at_10",
            dataset={"path": "local", "revision": "local"}, date=None, domains=None, task_subtypes=None,
            license=None, annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation=None,
        )

        def load_data(self, num_proc=None, **kwargs):
            corpus = Dataset.from_list([{"id": d["_id"], **{k: v for k, v in d.items() if k != "_id"}} for d in docs])
            rows = Dataset.from_list([{"id": q["_id"], "text": q["text"]} for q in queries])
            split = RetrievalSplitData(corpus=corpus, queries=rows, relevant_docs=qrels, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()
