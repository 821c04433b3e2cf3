"""Serving: an OpenAI-compatible server with blue and green slots, and promotion onto it."""
