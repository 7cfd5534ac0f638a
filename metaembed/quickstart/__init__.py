"""The offline quickstart: train (or load) a small MetaEmbed model on real packaged data, index it,
and measure retrieval quality and latency at every budget. ``metaembed quickstart`` runs it."""

from metaembed.quickstart.run import run_quickstart

__all__ = ["run_quickstart"]
