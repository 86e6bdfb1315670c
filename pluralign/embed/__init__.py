"""Frozen-encoder extraction: texts -> embeddings -> a pluralign dataset (docs/design/data-format.md).

``load_encoder`` builds an :class:`Encoder` (the offline ``wordllama`` static encoder,
or any Hugging Face ``transformers`` model); ``pluralign.embed.extract`` runs it over
the texts of a comparisons table, each distinct text once, in resumable chunks.
"""

from pluralign.embed.encoders import (
    Encoder,
    Text,
    TransformersEncoder,
    TransformersEncoderConfig,
    WordLlamaEncoder,
    WordLlamaEncoderConfig,
    load_encoder,
)

__all__ = [
    "Encoder",
    "Text",
    "TransformersEncoder",
    "TransformersEncoderConfig",
    "WordLlamaEncoder",
    "WordLlamaEncoderConfig",
    "load_encoder",
]
