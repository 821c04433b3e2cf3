"""Feedback in: sources (files, LangSmith, Langfuse), an idempotent store, and datasets built from it."""

from tuneloop.feedback.items import FeedbackItem, FeedbackPolicy, FeedbackSource

__all__ = ["FeedbackItem", "FeedbackPolicy", "FeedbackSource"]
