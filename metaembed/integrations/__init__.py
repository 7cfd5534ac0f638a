"""Bridges to the tools retrieval people already use; one module per system, each an optional extra.

* :mod:`~metaembed.integrations.sentence_transformers` -- a MetaEmbed model as a
  sentence-transformers 6 ``MultiVectorEncoder`` (``pip install metaembed[sentence-transformers]``);
* :mod:`~metaembed.integrations.mteb` -- an MTEB encoder and search backend, one run per budget
  (``metaembed[mteb]``);
* :mod:`~metaembed.integrations.lancedb` / :mod:`~metaembed.integrations.qdrant` -- export an index to
  a LanceDB table or a Qdrant collection with one multi-vector column per budget, and search it there
  (``metaembed[lancedb]``, ``metaembed[qdrant]``);
* :mod:`~metaembed.integrations.files` -- ids, vectors at a budget and payloads as safetensors or npz.

Nothing here is imported by ``import metaembed``: each module imports its library when it is used.
"""
