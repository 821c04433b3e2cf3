"""LoRA / QLoRA training with exact resume."""

from tuneloop.training.loop import TrainResult, train_lora

__all__ = ["TrainResult", "train_lora"]
