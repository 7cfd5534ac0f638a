"""A model's query encoder as an ONNX graph: what makes a cold ``metaembed search`` fast.

Loading a MetaEmbed model imports transformers and peft (about 5 s on 2 cores before any weight
is read). A search needs only the query side: tokenizer, backbone, query Meta Tokens. That side
is exported once (:mod:`metaembed.model.query_export`) to a folder of this cache::

    $METAEMBED_CACHE/query-encoders/<fingerprint>/   (default ~/.cache/metaembed/...)
        query_encoder.onnx   the query path (ids -> (B, R_q, D) L2-normalised rows) ...
        query_encoder.onnx.data   ... and its weights (onnxruntime maps them)
        tokenizer.json       the model's tokenizer, for the ``tokenizers`` library
        manifest.json        template, limits, the fingerprint and the other files' CRC-32C

and run here with onnxruntime and ``tokenizers`` only: this module imports neither torch nor
transformers. The *fingerprint* names the model's files (its folder and the backbone and
processor folders it refers to, e.g. a packaged wheel): the content of every file up to
:data:`CONTENT_HASH_LIMIT`, the size and modification time of larger ones (the backbone weights,
whose hashing would cost a cold search a tenth of a second), plus :data:`EXPORT_FORMAT` and the
source of the modules that define the exported graph (a new metaembed version that changes
them exports again). A changed model gets a new fingerprint, so a stale export is never
found; an export whose files do not match their recorded CRC-32C (hardware-accelerated: 10 ms
for MiniLM's 90 MB, where SHA-256 takes 70 ms) is removed, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from metaembed.cache import cache_folder
from metaembed.errors import InputError, MetaEmbedError, QueryExportError
from metaembed.model.builtin import builtin_path, is_builtin, is_package_reference, package_model_path
from metaembed.model.items import Item, ItemLike, to_items
from metaembed.model.templates import PromptTemplate

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

#: Bumped whenever the exported graph's inputs, outputs or manifest change meaning.
EXPORT_FORMAT = 1
#: Files up to this size enter the fingerprint by content, larger ones by size and mtime.
CONTENT_HASH_LIMIT = 16 * 2**20
GRAPH_FILE = "query_encoder.onnx"
WEIGHTS_FILE = "query_encoder.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
#: The files a manifest records the SHA-256 of.
EXPORT_FILES = (GRAPH_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
#: ``metaembed.model.config.CONFIG_NAME``, spelled here because that module imports transformers.
_MODEL_CONFIG_FILE = "metaembed_config.json"
#: The modules (relative to this one) whose code decides what an export computes.
_GRAPH_SOURCES = ("query_encoder.py", "query_export.py", "backbones/encoder.py", "backbones/__init__.py")
#: Queries run through the graph in batches of this many (bounded memory for long lists).
_BATCH = 32


class StaleExportError(QueryExportError):
    """An export folder's files do not match its manifest (or the manifest another model)."""


def exports_root() -> Path:
    """The folder holding one subfolder per exported query encoder.

    ``$METAEMBED_QUERY_ENCODERS`` when set (the test suite points it at a scratch folder), else
    ``query-encoders`` in :func:`metaembed.cache.cache_root`.
    """
    return cache_folder("query-encoders")


def model_folder(source: str | Path) -> Path | None:
    """The local folder of a built-in name or saved-model folder; ``None`` for anything else (a Hub id)."""
    if is_builtin(str(source)) and not Path(source).exists():
        try:
            return builtin_path(str(source))
        except InputError:
            return None
    folder = Path(source)
    return folder if (folder / _MODEL_CONFIG_FILE).is_file() else None


def _model_roots(folder: Path) -> list[Path] | None:
    """The model folder and the backbone / processor folders outside it that its config names."""
    config = json.loads((folder / _MODEL_CONFIG_FILE).read_text())
    roots = [folder.resolve()]
    for field in ("backbone", "processor"):
        value = config.get(field)
        if value is None or isinstance(value, dict):  # none, or a config object saved in the file
            continue
        if is_package_reference(value):
            located = Path(package_model_path(value))
        elif (folder / value).exists():
            located = folder / value
        elif Path(value).is_absolute() and Path(value).exists():
            located = Path(value)
        else:
            return None  # a Hub id: its files are not known without the Hub
        located = located.resolve()
        if not any(located == root or root in located.parents for root in roots):
            roots.append(located)
    return roots


def _file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_crc(path: Path) -> int:
    """CRC-32C of the file at ``path`` (what a manifest records of each export file)."""
    import crc32c

    value = 0
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 2**20):
            value = crc32c.crc32c(chunk, value)
    return value


def fingerprint(source: str | Path) -> str | None:
    """The cache key of the model ``source`` (built-in name or saved folder); ``None`` when not local.

    See the module docstring for what enters it. Costs a directory walk and the hash of the
    small files (a few milliseconds for the built-in model).
    """
    folder = model_folder(source)
    if folder is None:
        return None
    try:
        roots = _model_roots(folder)
    except (OSError, ValueError, MetaEmbedError):  # an unreadable config, a missing package
        return None
    if roots is None:
        return None
    try:
        return _digest_of(roots)
    except OSError:  # a file vanished during the walk, an unreadable file: no export for now
        return None


def _digest_of(roots: list[Path]) -> str:
    digest = hashlib.sha256(f"export format {EXPORT_FORMAT}\n".encode())
    for module in _GRAPH_SOURCES:  # the code that defines the exported graph: a change re-exports
        digest.update(_file_digest(Path(__file__).parent / module).encode())
    for number, root in enumerate(roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            stat = path.stat()
            identity = _file_digest(path) if stat.st_size <= CONTENT_HASH_LIMIT else f"{stat.st_size}:{stat.st_mtime_ns}"
            name = path.relative_to(root).as_posix() if path != root else path.name
            digest.update(f"{number}/{name}\0{identity}\n".encode())
    return digest.hexdigest()[:40]


@dataclass(frozen=True)
class Manifest:
    """What an export folder holds: how to format and cut a query, and what the graph returns."""

    fingerprint: str
    template: dict[str, str]
    max_length: int
    pad_token_id: int
    num_query_tokens: int
    embedding_dim: int
    checksums: dict[str, int]
    format: int = EXPORT_FORMAT

    def to_json(self) -> str:
        """The manifest file's text."""
        return json.dumps(self.__dict__, indent=2, sort_keys=True)

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        """The manifest of ``folder``; :class:`StaleExportError` when missing, unreadable or of another format."""
        try:
            values = json.loads((folder / MANIFEST_FILE).read_text())
            manifest = cls(**values)
        except (OSError, ValueError, TypeError) as error:
            raise StaleExportError(f"{folder / MANIFEST_FILE} cannot be read: {error}") from None
        if manifest.format != EXPORT_FORMAT:
            raise StaleExportError(f"{folder} holds export format {manifest.format}, not {EXPORT_FORMAT}")
        return manifest


class ExportedQueryEncoder:
    """Encode text queries to ``(N, r_q, D)`` float32 with an exported query path (no torch needed).

    Open one with :meth:`open` (checks every file against the manifest) or find the one of a
    model with :func:`find_query_encoder`. Gives the same rows as the model's
    ``encode_queries`` up to float rounding (the tests compare them).
    """

    def __init__(self, folder: Path, manifest: Manifest, session: Any, tokenizer: Any) -> None:
        self.folder = folder
        self.manifest = manifest
        self._session = session
        self._tokenizer = tokenizer
        self._template = PromptTemplate(**manifest.template)

    @classmethod
    def open(cls, folder: str | Path, expected_fingerprint: str | None = None) -> "ExportedQueryEncoder":
        """Load the export in ``folder``, checking its files' CRC-32C against the manifest.

        Raises :class:`StaleExportError` when a file is missing or differs, or when the manifest
        names another fingerprint than ``expected_fingerprint``.
        """
        import onnxruntime
        from tokenizers import Tokenizer

        folder = Path(folder)
        manifest = Manifest.read(folder)
        if expected_fingerprint is not None and manifest.fingerprint != expected_fingerprint:
            raise StaleExportError(f"{folder} was exported from another model ({manifest.fingerprint})")
        for name in EXPORT_FILES:
            try:
                checksum = file_crc(folder / name)
            except OSError as error:
                raise StaleExportError(f"{folder / name} cannot be read: {error}") from None
            if checksum != manifest.checksums.get(name):
                raise StaleExportError(f"{folder / name} does not match its recorded checksum (CRC-32C)")
        try:
            options = onnxruntime.SessionOptions()
            # a few short queries: one thread runs them in milliseconds, and a pool of threads
            # would cost more to start (and spin) than it saves
            options.intra_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(folder / GRAPH_FILE), options, providers=["CPUExecutionProvider"]
            )
            tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as error:  # onnxruntime and tokenizers raise their own types for a bad file
            raise StaleExportError(f"{folder} cannot be loaded: {error}") from None
        tokenizer.no_truncation()  # the model cuts to max_length itself, after formatting
        tokenizer.no_padding()
        return cls(folder, manifest, session, tokenizer)

    @property
    def num_query_tokens(self) -> int:
        """``R_q``: vectors per query."""
        return self.manifest.num_query_tokens

    @property
    def embedding_dim(self) -> int:
        """``D``."""
        return self.manifest.embedding_dim

    @staticmethod
    def can_encode(items: Sequence[Item]) -> bool:
        """Whether every item is text only (images need the model itself)."""
        return all(not item.images for item in items)

    def token_ids(self, item: Item) -> list[int]:
        """The ids the model reads for a query ``item`` (template applied, cut to the model's limit)."""
        prompt = self._template.render(item.text, 0, "query", item.instruction)
        return self._tokenizer.encode(prompt, add_special_tokens=False).ids[: self.manifest.max_length]

    def encode(self, queries: Sequence[ItemLike] | ItemLike, r_q: int | None = None) -> "np.ndarray":
        """Embed text queries: float32 ``(N, r_q, D)``, L2-normalised rows (``r_q=None``: all ``R_q``).

        Raises :class:`~metaembed.errors.InputError` for an item with images or an ``r_q`` outside
        ``1..R_q``.
        """
        import numpy as np

        items = to_items(queries)
        keep = self.num_query_tokens if r_q is None else r_q
        if not 1 <= keep <= self.num_query_tokens:
            raise InputError(f"r_q must be in 1..{self.num_query_tokens}, got {keep}")
        if not self.can_encode(items):
            raise InputError("the exported query encoder reads text queries only; load the model for images")
        output = np.empty((len(items), keep, self.embedding_dim), dtype=np.float32)
        for start in range(0, len(items), _BATCH):
            ids = [self.token_ids(item) for item in items[start : start + _BATCH]]
            longest = max(len(row) for row in ids)
            input_ids = np.full((len(ids), longest), self.manifest.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(ids), longest), dtype=np.int64)
            for row, tokens in enumerate(ids):  # right padding: the graph counts positions from the mask
                input_ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1
            (vectors,) = self._session.run(None, {"input_ids": input_ids, "attention_mask": mask})
            output[start : start + len(ids)] = vectors[:, :keep]
        return output


def export_folder(key: str) -> Path:
    """Where the export of the model with fingerprint ``key`` lives."""
    return exports_root() / key


def find_query_encoder(source: str | Path) -> ExportedQueryEncoder | None:
    """The valid export of the model ``source`` (built-in name or saved folder), else ``None``.

    An export that fails its checks is removed (it is rebuilt on the next export), never used.
    """
    key = fingerprint(source)
    if key is None:
        return None
    folder = export_folder(key)
    if not folder.is_dir():
        return None
    try:
        return ExportedQueryEncoder.open(folder, key)
    except StaleExportError as error:
        logger.warning("removing a broken query-encoder export: %s", error)
        shutil.rmtree(folder, ignore_errors=True)
        return None


__all__ = [
    "CONTENT_HASH_LIMIT",
    "EXPORT_FILES",
    "EXPORT_FORMAT",
    "ExportedQueryEncoder",
    "Manifest",
    "StaleExportError",
    "export_folder",
    "exports_root",
    "file_crc",
    "find_query_encoder",
    "fingerprint",
    "model_folder",
]
