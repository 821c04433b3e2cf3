"""Evaluation helpers: metric modules shipped in-package so they load offline."""
