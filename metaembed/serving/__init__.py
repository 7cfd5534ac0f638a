"""HTTP search service: ``create_app(index)`` returns a FastAPI app; ``metaembed serve`` runs it."""

from metaembed.serving.app import create_app

__all__ = ["create_app"]
