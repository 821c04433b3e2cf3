"""What each export target writes besides the weights: vLLM adapter folders, Ollama Modelfiles, Hub pushes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tuneloop.models.chat import DEFAULT_TEMPLATE
from tuneloop.errors import TransientError, UserError

# vLLM's LoRAConfig accepts only these values for --max-lora-rank (default 16).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LLAMA_CPP_ENV = "TUNELOOP_LLAMA_CPP_DIR"
CONVERTER = "convert_hf_to_gguf.py"
# Ollama templates are Go templates, not Jinja: only chat templates known here are translated.
OLLAMA_TEMPLATES = {
    DEFAULT_TEMPLATE: '{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n',
}


# -- vLLM -------------------------------------------------------------------------
def vllm_problems(cfg: dict) -> list[str]:
    """Why vLLM would refuse this adapter_config.json (empty when it can serve it)."""
    problems = [f"`{k}` is missing" for k in ("r", "lora_alpha") if cfg.get(k) is None]
    if not cfg.get("target_modules"):
        problems.append("`target_modules` is missing or empty")
    r = cfg.get("r")
    if r is not None and not (isinstance(r, int) and 0 < r <= VLLM_MAX_LORA_RANKS[-1]):
        problems.append(f"`r` is {r!r}; vLLM serves ranks 1..{VLLM_MAX_LORA_RANKS[-1]}")
    if cfg.get("use_dora"):
        problems.append("DoRA (`use_dora: true`) is not served by vLLM")
    if cfg.get("modules_to_save"):
        problems.append(f"`modules_to_save` is {cfg['modules_to_save']!r}; vLLM needs it empty")
    if cfg.get("bias", "none") != "none":
        problems.append(f"`bias` is {cfg['bias']!r}; vLLM serves only bias: none")
    return problems


def vllm_max_lora_rank(r: int) -> int:
    return next(x for x in VLLM_MAX_LORA_RANKS if x >= r)


def write_adapter(adapter_dir: Path, cfg: dict, base: str, dst: Path) -> dict:
    """adapter_model.safetensors as trained, adapter_config.json naming the base it must be served on."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(adapter_dir / "adapter_model.safetensors", dst / "adapter_model.safetensors")
    (dst / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": base}, indent=2) + "\n")
    return {"merged": False, "r": cfg["r"], "lora_alpha": cfg["lora_alpha"], "target_modules": cfg["target_modules"]}


def vllm_command(base: str, name: str, path: Path, r: int) -> str:
    return (f"vllm serve {shlex.quote(str(base))} --enable-lora --max-lora-rank {vllm_max_lora_rank(r)} "
            f"--lora-modules {shlex.quote(f'{name}={path}')}")


# -- Ollama ---------------------------------------------------------------------
def find_gguf_converter() -> list[str] | None:
    """llama.cpp's converter as a command: $TUNELOOP_LLAMA_CPP_DIR/convert_hf_to_gguf.py, else one on PATH."""
    folder = os.environ.get(LLAMA_CPP_ENV)
    if folder:
        script = Path(folder).expanduser() / CONVERTER
        if not script.is_file():
            raise UserError(f"{LLAMA_CPP_ENV}={folder}", f"holds no {CONVERTER}",
                            f"point it at a llama.cpp checkout (the folder with {CONVERTER}) or unset it")
        return [sys.executable, str(script)]
    found = shutil.which(CONVERTER) or shutil.which("llama-convert-hf-to-gguf")
    return [found] if found else None


def convert_to_gguf(converter: list[str], model_dir: Path, outfile: Path, outtype: str, log=print) -> None:
    cmd = [*converter, str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    log(f"converting to GGUF ({outtype}) with {converter[-1]}")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise UserError(converter[-1],
                        f"failed to convert the merged model to GGUF (exit {done.returncode}):\n{tail}\n",
                        f"install llama.cpp's Python requirements for this interpreter, or unset {LLAMA_CPP_ENV} "
                        "to export a Modelfile over the safetensors folder instead")


def modelfile(source: str, tok, header: str) -> tuple[str, str | None]:
    """Modelfile text, and a note when the chat template could not be translated to Ollama's."""
    lines = [f"# {header}", f"FROM {source}"]
    template = OLLAMA_TEMPLATES.get(getattr(tok, "chat_template", None) or "")
    note = None
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        note = ("the tokenizer's chat template is not one tuneloop can translate to an Ollama TEMPLATE; Ollama "
                "will use the template it detects from the model, or add a TEMPLATE line to the Modelfile")
    if tok.eos_token:
        lines.append(f'PARAMETER stop "{tok.eos_token}"')
    return "\n".join(lines) + "\n", note


def gguf_missing_note(out: Path, int8: bool) -> str:
    outtype = "q8_0" if int8 else "f16"
    return (f"no GGUF written: converting needs llama.cpp's {CONVERTER}, which was not found ({LLAMA_CPP_ENV} unset "
            f"and none on PATH). The Modelfile points at the merged safetensors folder, which `ollama create` "
            f"imports directly for Llama, Mistral, Gemma and Phi-3 architectures. For GGUF: "
            f"`git clone https://github.com/ggml-org/llama.cpp`, `pip install -r llama.cpp/requirements/"
            f"requirements-convert_hf_to_gguf.txt`, then either export again with {LLAMA_CPP_ENV}=<that folder>, "
            f"or run "
            f"`python llama.cpp/{CONVERTER} {shlex.quote(str(out / 'model'))} "
            f"--outfile {shlex.quote(str(out / 'model.gguf'))} --outtype {outtype}` "
            f"and change the Modelfile's FROM line to `FROM ./model.gguf`")


# -- Hugging Face Hub -------------------------------------------------------------
def push_folder(folder: Path, repo_id: str, *, endpoint: str | None, token: str | None, private: bool,
                message: str, log=print) -> str:
    """create_repo (exist_ok) + upload_folder; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    retry = f"the export at {folder} is complete; retry with `hf upload {repo_id} {shlex.quote(str(folder))} .`"
    log(f"pushing {folder} to {api.endpoint}/{repo_id}")
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=message)
        return info.commit_url
    except OfflineModeIsEnabled as e:
        raise UserError("HF_HUB_OFFLINE", "is set, which blocks every Hub request",
                        f"unset HF_HUB_OFFLINE for the push; {retry}") from e
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            raise UserError(repo_id, f"the Hub refused the push ({status})",
                            f"set HF_TOKEN to a token with write access (or run `hf auth login`); {retry}") from e
        if status is not None and status < 500:
            raise UserError(repo_id, f"the Hub answered {status}: {e}", retry) from e
        raise TransientError(f"pushing to {repo_id} failed: {e}; {retry}") from e
    except network_errors() as e:
        raise TransientError(f"pushing to {repo_id} failed: {e!r}; {retry}") from e


def network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures as huggingface_hub's HTTP client raises them (httpx2 from hub 2.x, httpx before)."""
    import importlib

    found: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except ImportError:
            pass
    return tuple(found)
