"""Export a trained adapter for serving elsewhere: vLLM, Ollama, the Hugging Face Hub, or a plain folder.

    export_version(base, adapter_dir, "dir", out, quantize="int8")

Weights are written as safetensors only. Each export is staged in a hidden folder beside `out` and
renamed into place, with README.md (how to use it) and tuneloop-export.json (source, options and
the sha256 of every file). See docs/export.md.
"""

from tuneloop.export.api import TARGETS, ExportResult, export_version
from tuneloop.export.int8 import load_int8_model

__all__ = ["TARGETS", "ExportResult", "export_version", "load_int8_model"]
