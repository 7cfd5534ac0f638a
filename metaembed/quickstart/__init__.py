"""The built-in model's recipe, its held-out collection and the offline quickstart.

``metaembed quickstart`` (:func:`run_quickstart`) evaluates the shipped model on held-out manuals
at every budget beside MiniLM as sentence-transformers ships it; :mod:`.recipe` is the one model
builder and training configuration of the built-in model and its comparison variants;
:mod:`.docpages` builds the data from Debian's documentation packages.
"""

from metaembed.quickstart.run import run_quickstart

__all__ = ["run_quickstart"]
