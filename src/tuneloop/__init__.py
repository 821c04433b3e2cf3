"""tuneloop: keep a language model improving from its users' feedback, safely."""

__version__ = "0.1.0"
