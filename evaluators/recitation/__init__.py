"""Recitation evaluator: flag model outputs that copy a protected corpus (books).

``RecitationIndex.build(corpus_dir)`` indexes overlapping word windows with
datasketch MinHash; ``index.check(text)`` returns a ``RecitationMatch`` or None.
See docs/recitation.md.
"""

from evaluators.recitation.errors import (
    CorpusError,
    IndexFormatError,
    IndexVersionError,
    RecitationError,
)
from evaluators.recitation.index import RecitationIndex, RecitationMatch

__all__ = [
    "CorpusError",
    "IndexFormatError",
    "IndexVersionError",
    "RecitationError",
    "RecitationIndex",
    "RecitationMatch",
]
