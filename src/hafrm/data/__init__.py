"""Preference data: reading files and hub datasets, schema adapters, tokenization and batching."""

from hafrm.data.encoding import PairCollator, PairEncoder
from hafrm.data.errors import DataError, SkipReport
from hafrm.data.loading import load_pairs, train_test_split

__all__ = ["DataError", "PairCollator", "PairEncoder", "SkipReport", "load_pairs", "train_test_split"]
