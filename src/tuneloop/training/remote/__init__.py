"""Remote trainers: OpenAI-compatible fine-tuning services and AutoTrain-style REST services."""
