"""Persistent multi-vector index: store candidates once, search at any budget ``(r_q, r_c)``.

>>> import torch
>>> from metaembed.index import MultiVectorIndex
>>> index = MultiVectorIndex.create(None, dim=4, num_vectors=2)   # a scratch index
>>> vectors = torch.eye(4)[None].repeat(3, 1, 1)[:, :2] * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
>>> index.add(["a", "b", "c"], vectors, payloads=[{"n": 1}, None, None])
>>> [(hit.id, hit.score) for hit in index.search(vectors[:1], k=2, budget="1,1")[0]]
[('c', 3.0), ('b', 2.0)]
>>> index.close()
"""

from metaembed.index.catalog import Damage
from metaembed.index.first_stages import FirstStage, search_modes
from metaembed.index.multivector import MultiVectorIndex
from metaembed.index.searcher import Searcher, SearchResult, merge_results

__all__ = ["MultiVectorIndex", "SearchResult", "Searcher", "FirstStage", "Damage", "merge_results", "search_modes"]
