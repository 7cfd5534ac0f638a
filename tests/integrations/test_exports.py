"""Exports of an index: plain files, an embedded LanceDB table, a Qdrant local-mode collection.

Parity: the databases return the same top-10 as our exact search, at every budget of the ladder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaembed.budget import parse_ladder
from metaembed.cli import main
from metaembed.errors import BudgetError, InputError
from metaembed.index import MultiVectorIndex, Searcher
from metaembed.integrations import lancedb as lance_export
from metaembed.integrations import qdrant as qdrant_export
from metaembed.integrations.lancedb import LanceDBSearcher
from metaembed.integrations.qdrant import QdrantSearcher
from metaembed.integrations.export_to import export_index
from metaembed.integrations.files import read_file, write_file

LADDER = "1,1 2,4 4,8"
N, R_C, DIM = 240, 8, 16


def _unit(values: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(values, dim=-1)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    generator = torch.Generator().manual_seed(7)
    vectors = _unit(torch.randn(N, R_C, DIM, generator=generator))
    folder = tmp_path_factory.mktemp("exports") / "index"
    # float32 storage: the databases then see exactly the vectors our search scores
    built = MultiVectorIndex.create(folder, dim=DIM, num_vectors=R_C, dtype="float32",
                                    metadata={"budgets": LADDER, "model": "tiny"})
    ids = [f"doc-{i}" for i in range(N)]
    built.add(ids, vectors, payloads=[{"page": i, "path": f"file{i % 7}.pdf"} if i % 5 else None for i in range(N)])
    built.delete(["doc-3", "doc-4"])  # deleted rows must not be exported
    yield built
    built.close()


@pytest.fixture(scope="module")
def queries():
    return _unit(torch.randn(6, 4, DIM, generator=torch.Generator().manual_seed(11)))


def _same_top10(theirs, ours) -> None:
    for their_hits, our_hits in zip(theirs, ours, strict=True):
        assert [h.id for h in their_hits] == [h.id for h in our_hits]
        np.testing.assert_allclose([h.score for h in their_hits], [h.score for h in our_hits], atol=1e-4)
        assert [h.payload for h in their_hits] == [h.payload for h in our_hits]


def test_lancedb_table_gives_our_exact_top10_at_every_budget(index, queries, tmp_path):
    written = lance_export.export(index, tmp_path / "lance")
    assert len(written) == len(index) == N - 2 and written.budgets == [1, 4, 8]
    reopened = LanceDBSearcher.open(tmp_path / "lance")
    assert isinstance(reopened, Searcher) and reopened.dim == DIM and reopened.num_vectors == 8
    for budget in parse_ladder(LADDER):
        _same_top10(reopened.search(queries, k=10, budget=budget), index.search(queries, k=10, budget=budget))
    with pytest.raises(BudgetError, match="no vectors for r_c=2 in this export; it holds r_c 1, 4, 8"):
        reopened.search(queries, budget="2,2")
    with pytest.raises(BudgetError):
        reopened.search(queries, budget="1,9")
    with pytest.raises(InputError, match="mode must be 'exact'"):
        reopened.search(queries, budget="1,1", mode="coarse")
    with pytest.raises(InputError, match="already exists"):
        lance_export.export(index, tmp_path / "lance")


def test_qdrant_collection_gives_our_exact_top10_at_every_budget(index, queries, tmp_path):
    qdrant_export.export(index, tmp_path / "qdrant", collection="docs").close()
    searcher = QdrantSearcher.open(tmp_path / "qdrant", "docs")  # local mode on disk, reopened
    try:
        info = searcher.client.get_collection("docs")
        assert info.points_count == len(searcher) == N - 2
        for params in info.config.params.vectors.values():
            assert params.multivector_config.comparator == "max_sim" and params.distance == "Dot"
        assert searcher.budgets == [1, 4, 8] and searcher.dim == DIM
        for budget in parse_ladder(LADDER):
            _same_top10(searcher.search(queries, k=10, budget=budget), index.search(queries, k=10, budget=budget))
        wanted = {"page": {"in": [3, 7, 11]}}
        filtered = searcher.search(queries, k=10, budget="4,8", filter=wanted)
        _same_top10(filtered, index.search(queries, k=10, budget="4,8", filter=wanted))
        assert filtered[0] and all(hit.payload["page"] in (3, 7, 11) for hits in filtered for hit in hits)
    finally:
        searcher.close()


def test_files_hold_ids_vectors_at_a_budget_and_payloads(index, tmp_path):
    for suffix in ("safetensors", "npz"):
        path = tmp_path / f"index.{suffix}"
        assert write_file(index, path, r_c=4, dtype="float16") == N - 2
        ids, vectors, payloads = read_file(path)
        assert ids == index.ids and vectors.dtype == torch.float16 and vectors.shape == (N - 2, 4, DIM)
        torch.testing.assert_close(vectors.float(), index.vectors(ids)[:, :4], atol=1e-3, rtol=1e-3)
        stored = index.export(payloads=True)
        assert payloads == [p for _, _, batch in stored for p in batch]
        assert payloads[ids.index("doc-7")] == {"page": 7, "path": "file0.pdf"} and payloads[ids.index("doc-5")] is None
    with pytest.raises(InputError, match="unknown export format 'csv'"):
        write_file(index, tmp_path / "index.csv")


def test_cli_index_export(index, tmp_path, capsys):
    folder = str(index.path)
    assert main(["index", "export", folder, str(tmp_path / "x.npz"), "--to", "npz", "--budget", "2,4"]) == 0
    assert f"exported {N - 2} items" in capsys.readouterr().out
    with np.load(tmp_path / "x.npz") as data:
        assert data["vectors"].shape == (N - 2, 4, DIM) and json.loads(data["payloads"][1]) == {"page": 1, "path": "file1.pdf"}
    assert main(["index", "export", folder, ":memory:", "--to", "qdrant"]) == 0
    assert main(["index", "export", folder, str(tmp_path / "lance"), "--to", "lancedb", "--budgets", "2,2"]) == 0
    assert LanceDBSearcher.open(tmp_path / "lance").budgets == [2]
    assert main(["index", "export", folder, str(tmp_path / "y"), "--to", "parquet"]) == 2
    assert "unknown export target 'parquet'" in capsys.readouterr().err
    assert main(["index", "export", folder, str(tmp_path / "z.npz"), "--to", "npz", "--budget", "99"]) == 2
    assert main(["index", "export", folder, "http://127.0.0.1:9", "--to", "qdrant"]) == 2  # nothing listens there
    assert "cannot use Qdrant at http://127.0.0.1:9" in capsys.readouterr().err
    assert export_index(index, "safetensors", tmp_path / "w.safetensors", budget=8) == N - 2
