"""Errors raised by the recitation evaluator; the CLI turns them into exit code 2."""

from __future__ import annotations


class RecitationError(Exception):
    """Base class: a problem the operator can fix (bad corpus, bad or stale index)."""


class CorpusError(RecitationError):
    """The corpus directory is missing, empty or unreadable."""


class IndexFormatError(RecitationError):
    """The index directory is missing, incomplete, corrupted or of another format."""


class IndexVersionError(IndexFormatError):
    """The index was built by an incompatible datasketch or hashing scheme."""
