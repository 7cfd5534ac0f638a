"""Export a model's query path to ONNX, for :mod:`metaembed.model.query_encoder` to run without torch.

:func:`export_query_encoder` traces the backbone adapter's ``query_path`` (ids → ``(B, R_q, D)``
embeddings, see :class:`~metaembed.model.backbones.encoder.OneWayQueryPath`) with the TorchScript
exporter (``dynamo=False``: the graph has no data-dependent control flow, so tracing captures it
exactly, and it needs only the ``onnx`` package, not onnxscript), saves the tokenizer beside it and
checks the result against the model before anything is committed: the same token ids and the
same rows (max abs difference below :data:`TOLERANCE`) on probe queries, a long one among them so
that truncation is checked too. The folder is written under a temporary name and renamed into
place, so a reader sees a whole export or none.

``metaembed index build`` exports after it has built an index, ``metaembed model export`` on
request, and a search that had to load the model exports for the next one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

import torch

from metaembed.errors import QueryExportError
from metaembed.model.items import to_items
from metaembed.model.modeling import MetaEmbedModel
from metaembed.model.query_encoder import (
    EXPORT_FILES, GRAPH_FILE, MANIFEST_FILE, TOKENIZER_FILE, WEIGHTS_FILE, ExportedQueryEncoder, Manifest, export_folder, exports_root,
    file_crc, find_query_encoder, fingerprint,
)

#: Largest difference allowed between the export's rows and the model's (fp32 rounding is ~1e-6).
TOLERANCE = 1e-4
#: An unfinished export older than this (a crashed process) is removed by the next export.
_ABANDONED_AFTER_S = 3600.0
_PROBES = (
    "which river flows past the old mill",
    "Grüße aus Köln: naïve café, 東京 and a tab\there",
    " ".join(f"word{i} passage text" for i in range(3000)),  # longer than any model's limit: checks the cut
)


def _query_module(model: MetaEmbedModel) -> torch.nn.Module:
    """The model's exportable query path, or :class:`QueryExportError` saying why there is none."""
    if model.meta_tokens is None:
        raise QueryExportError(f"only Meta Token pooling is exported, not pooling {model.config.pooling!r}")
    if not getattr(model.tokenizer, "is_fast", False):
        raise QueryExportError("the model's tokenizer is not a fast (tokenizers) tokenizer")
    if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
        raise QueryExportError("only float32 models are exported (the model was loaded in another dtype)")
    module = model.adapter.query_path(model.meta_tokens, model.projection) if model.one_way else None
    if module is None:
        raise QueryExportError(
            f"the {model.config.family!r} backbone with meta_attention {model.config.meta_attention!r} "
            "has no exported query path (one-way BERT models have one)"
        )
    return module.eval()


def _content_ids(model: MetaEmbedModel, queries: list[str]) -> list[list[int]]:
    """Each query's token ids as the model reads them, without the Meta Token slots."""
    batch = model.prepare(queries, "query", padding_side="right")
    appended = model.num_appended("query")
    lengths = batch["attention_mask"].sum(dim=1) - appended
    return [batch["input_ids"][row, : int(length)].tolist() for row, length in enumerate(lengths)]


def _padded(ids: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return input_ids, mask


def _max_length(model: MetaEmbedModel) -> int:
    limit = model.adapter.max_content_tokens(model.num_appended("query"))
    return int(model.config.max_length if limit is None else min(model.config.max_length, limit))


def _write(model: MetaEmbedModel, folder: Path, key: str) -> None:
    """The three files of an export of ``model`` in ``folder``."""
    module = _query_module(model)
    example = _padded(_content_ids(model, list(_PROBES[:2])), model.adapter.pad_token_id)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer remarks
        torch.onnx.export(
            module, example, str(folder / GRAPH_FILE), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask"], output_names=["embeddings"],
            dynamic_axes={"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                          "embeddings": {0: "batch"}},
        )  # fmt: skip
    # weights in a side file: onnxruntime maps it instead of parsing it out of the graph's protobuf
    # (a third of the session's start-up for MiniLM)
    import onnx

    graph = onnx.load(str(folder / GRAPH_FILE))
    onnx.save_model(graph, str(folder / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=WEIGHTS_FILE, size_threshold=1024)
    (folder / TOKENIZER_FILE).write_text(model.tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    manifest = Manifest(
        fingerprint=key, template=dataclasses.asdict(model.template), max_length=_max_length(model),
        pad_token_id=model.adapter.pad_token_id, num_query_tokens=model.num_query_tokens,
        embedding_dim=model.embedding_dim, checksums={name: file_crc(folder / name) for name in EXPORT_FILES},
    )  # fmt: skip
    (folder / MANIFEST_FILE).write_text(manifest.to_json())


def _check(model: MetaEmbedModel, folder: Path, key: str) -> None:
    """Raise :class:`QueryExportError` unless the export in ``folder`` reads and embeds as the model does."""
    exported = ExportedQueryEncoder.open(folder, key)
    items = list(_PROBES)
    expected_ids = _content_ids(model, items)
    got_ids = [exported.token_ids(item) for item in to_items(items)]
    if got_ids != expected_ids:
        raise QueryExportError("the exported tokenizer gives other token ids than the model's")
    expected = model.encode_queries(items, show_progress_bar=False).numpy()
    difference = float(abs(exported.encode(items) - expected).max())
    if not difference <= TOLERANCE:
        raise QueryExportError(f"the exported query encoder differs from the model by {difference:.2e}")


def _remove_abandoned(root: Path) -> None:
    for path in root.glob(".tmp-*"):
        try:
            if time.time() - path.stat().st_mtime > _ABANDONED_AFTER_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:  # removed by another process meanwhile
            pass


def export_query_encoder(model: MetaEmbedModel | str | Path, *, force: bool = False) -> Path:
    """Export the query path of ``model`` into the cache and return the export's folder.

    ``model`` is a built-in name, a saved model folder, or a model loaded from one (its
    ``name_or_path`` names the files that key the export: export a model as it is saved). An
    existing valid export is kept unless ``force``. Raises :class:`QueryExportError` when the
    model has no exportable query path (other families, bidirectional Meta Token attention,
    baseline poolings, a non-float32 load) or the export does not match the model.
    """
    if not isinstance(model, MetaEmbedModel):
        model = MetaEmbedModel.from_pretrained(model)
    _query_module(model)  # fail before anything is read or written
    source = model.name_or_path
    if source is None:
        raise QueryExportError("the model was built in memory: save it (save_pretrained) and export the folder")
    key = fingerprint(source)
    if key is None:
        raise QueryExportError(f"{source} is not a built-in model or a saved model folder on this machine")
    if not force and find_query_encoder(source) is not None:
        return export_folder(key)
    root = exports_root()
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    staging = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        with model.evaluating():
            _write(model, staging, key)
            _check(model, staging, key)
        final = export_folder(key)
        if final.exists():  # stale (force) or made meanwhile by another process: ours replaces it
            retired = root / f".tmp-{key}-retired-{uuid.uuid4().hex[:8]}"
            try:
                final.rename(retired)
            except OSError:
                pass
            shutil.rmtree(retired, ignore_errors=True)
        try:
            staging.rename(final)
        except OSError:  # another process committed the same export between the two renames
            if find_query_encoder(source) is None:
                raise
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["TOLERANCE", "export_query_encoder"]
