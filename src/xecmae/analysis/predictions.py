"""Prediction files (the format lives with the other ROOT I/O, in :mod:`xecmae.data.predictions`)."""

from xecmae.data.predictions import (
    CHUNK_EVENTS,
    METADATA,
    TREE,
    PredictionWriter,
    branch_types,
    normalizer_from_metadata,
    read_metadata,
)

__all__ = ["CHUNK_EVENTS", "METADATA", "TREE", "PredictionWriter", "branch_types", "normalizer_from_metadata",
           "read_metadata"]
