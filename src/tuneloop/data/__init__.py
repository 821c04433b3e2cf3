"""Feedback files in, validated and versioned datasets out."""

from tuneloop.data.dataset import PreparedDataset, prepare_dataset, read_rows_strict
from tuneloop.data.validate import Issue, Row, ValidationReport, validate_file

__all__ = ["Issue", "PreparedDataset", "Row", "ValidationReport", "prepare_dataset", "read_rows_strict", "validate_file"]
