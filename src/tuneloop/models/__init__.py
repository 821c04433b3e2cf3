"""Base models: loading any causal LM by id or path, the tiny local Llama, chat encoding, and presets."""
