"""The MetaEmbed model: Meta Tokens on a Hugging Face backbone, encode API, save/load.

>>> from metaembed.model import MetaEmbedConfig, MetaEmbedModel   # doctest: +SKIP
"""

from metaembed.model.config import MetaEmbedConfig
from metaembed.model.modeling import MetaEmbedModel

__all__ = ["MetaEmbedConfig", "MetaEmbedModel"]
