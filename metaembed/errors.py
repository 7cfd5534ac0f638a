"""The exceptions metaembed raises at its public boundary.

Every error a user can cause by passing bad input is a subclass of both
:class:`MetaEmbedError` and the matching built-in (``ValueError`` or
``TypeError``), so callers can catch either the project-wide family or the
familiar built-in.
"""

from __future__ import annotations


class MetaEmbedError(Exception):
    """Base class of every error raised by metaembed on purpose."""


class BudgetError(MetaEmbedError, ValueError):
    """A budget ``(r_q, r_c)`` is malformed or larger than what is available."""


class InputError(MetaEmbedError, ValueError):
    """An item, batch or file given by the user cannot be used as it is."""


class ItemTypeError(MetaEmbedError, TypeError):
    """An item has a type metaembed does not know how to encode."""


class IndexStateError(MetaEmbedError, ValueError):
    """An index operation cannot be done: unknown or duplicate ids, a path that
    is not an index, vectors of the wrong shape, and the like."""


class IndexCorruptError(IndexStateError):
    """Stored index data fails its checksum or holds impossible values; the message names the file."""


class IndexBusyError(IndexStateError):
    """Another process holds the index's writer lock."""


class StorageFullError(IndexStateError):
    """The disk ran out of space during a write; the index keeps its last committed state."""


class QueryExportError(MetaEmbedError, ValueError):
    """A model's query encoder cannot be exported (no export for its kind), or an export is broken."""


class ShardUnavailableError(MetaEmbedError, RuntimeError):
    """A shard of a sharded collection did not answer (its process died or is restarting).

    ``shards`` lists the shard numbers that did not answer.
    """

    def __init__(self, message: str, shards: "list[int] | tuple[int, ...]" = ()) -> None:
        super().__init__(message)
        self.shards = tuple(shards)

    def __reduce__(self):  # keep ``shards`` when pickled across processes
        return (type(self), (str(self), self.shards))


__all__ = [
    "MetaEmbedError",
    "BudgetError",
    "InputError",
    "ItemTypeError",
    "IndexStateError",
    "IndexCorruptError",
    "IndexBusyError",
    "StorageFullError",
    "ShardUnavailableError",
    "QueryExportError",
]
