"""README.md for each export: what the folder holds and the exact commands that use it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tuneloop.export.targets import vllm_command
from tuneloop.specs import TINY_BASE


def ollama_create(name: str, quantize: bool) -> str:
    return f"ollama create {name} -f Modelfile" + (" --quantize q8_0" if quantize else "")


def hub_base(base_name: str) -> str | None:
    """The base as a Hub id for the model card, when it is one (not a local path or the built-in tiny base)."""
    if base_name == TINY_BASE or Path(base_name).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", base_name):
        return None
    return base_name


def commands(*, target, name, base, base_name, out, cfg, gguf, int8, repo_id, adapter_only=False, **_) -> list[str]:
    """The shell commands that put this export to use."""
    if target == "vllm":
        return [vllm_command(base, name, out, cfg["r"])]
    if target == "ollama":
        return [f"cd {shlex.quote(str(out))}", ollama_create(name, int8 and not gguf), f"ollama run {name}"]
    if target == "hf-hub" and adapter_only:
        return [vllm_command(base_name, name, repo_id, cfg["r"])]
    if int8:
        return []  # loaded through Python only; the README shows how
    return [f"vllm serve {repo_id if target == 'hf-hub' else shlex.quote(str(out))}"]


def render(**c) -> str:
    target, name, out, done, int8 = c["target"], c["name"], c["out"], c["done"], c["int8"]
    source = f"registry version {c['version']}" if c["version"] else f"the adapter folder `{c['adapter']}`"
    where = c["repo_id"] if target == "hf-hub" else str(out)
    lines = []
    if target == "hf-hub":
        tags = ["tuneloop", "lora" if not done["merged"] else "merged-lora"] + (["int8"] if int8 else [])
        front = ["---", f"library_name: {'peft' if not done['merged'] else 'transformers'}"] if not int8 else ["---"]
        if hub_base(c["base_name"]):
            front.append(f"base_model: {c['base_name']}")
        lines += front + ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    kind = "LoRA adapter" if not done["merged"] else ("merged model, int8 weights" if int8 else "merged model")
    lines += [f"# {name}: {kind}", "",
              f"Exported by `tuneloop export` from {source}, trained on the base model `{c['base_name']}`.", ""]
    cmds = commands(**c)
    if target == "vllm":
        lines += ["`adapter_model.safetensors` and `adapter_config.json` are the LoRA adapter as trained "
                  f"(rank {c['cfg']['r']}, alpha {c['cfg']['lora_alpha']}); serve it on its base with vLLM:", ""]
    elif target == "ollama":
        lines += ["Build and run the model with Ollama from this folder:", ""]
    elif not done["merged"]:
        lines += ["Load it on its base with peft:", "", "```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM", "",
                  f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{c["base_name"]}"), '
                  f'"{where}")',
                  "```", "", "or serve it with vLLM:", ""]
    elif int8:
        q = done["quantization"]
        lines += [f"`model.int8.safetensors` holds {q['scheme']}. transformers cannot read it alone; "
                  f"tuneloop rebuilds the model from `config.json` and dequantizes to {q['dequantize_to']}:", "",
                  "```python", "from tuneloop.export import load_int8_model", "from transformers import AutoTokenizer",
                  "", f'model = load_int8_model("{where}")', f'tok = AutoTokenizer.from_pretrained("{where}")', "```",
                  ""]
    else:
        lines += [f"The adapter is merged into the base weights ({done['dtype']}, safetensors):", "", "```python",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{where}")',
                  f'tok = AutoTokenizer.from_pretrained("{where}")', "```", "", "or serve it with vLLM:", ""]
    if cmds:
        lines += ["```sh", *cmds, "```", ""]
    if target == "vllm" or (target == "hf-hub" and not done["merged"]):
        lines += ["Then ask for the adapter by name:", "", "```sh",
                  "curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\",
                  f"  -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
                  "```", ""]
    if c["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in c["notes"]] + [""]
    lines += ["`tuneloop-export.json` lists the source, the options and the sha256 of every file here.", ""]
    return "\n".join(lines)
