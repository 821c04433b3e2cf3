"""`export_version`: check everything, build the export in a hidden folder, rename it into place."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.export import readme, targets
from tuneloop.runtime.fsutil import atomic_write_text, sha256_file, staging_dir

TARGETS = ("vllm", "ollama", "hf-hub", "dir")
QUANTIZE = (None, "int8")
MANIFEST = "tuneloop-export.json"
PICKLES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.pkl")


@dataclass
class ExportResult:
    target: str
    out: Path
    files: list[dict]  # path, bytes, sha256 of every file written (the manifest itself aside)
    notes: list[str] = field(default_factory=list)  # what was not done, and how to finish it
    commands: list[str] = field(default_factory=list)  # shell commands that use the export (also in README.md)
    commit_url: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f["bytes"] for f in self.files)


def read_adapter_config(adapter_dir: Path) -> dict:
    """The adapter's config, after checking the folder holds a safetensors LoRA adapter."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(str(adapter_dir), "is not a LoRA adapter folder (no adapter_config.json)",
                        "pass a registry version (v3, champion) or a folder written by peft's save_pretrained")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        pickled = [p for p in PICKLES if (adapter_dir / p).exists()]
        if pickled:
            raise UserError(str(adapter_dir / pickled[0]), "is a pickle file; tuneloop reads and writes adapter "
                            "weights as safetensors only, since loading a pickle can run arbitrary code",
                            "re-save the adapter with `model.save_pretrained(dir, safe_serialization=True)` "
                            "where you trust the file")
        raise UserError(str(adapter_dir), "has no adapter_model.safetensors",
                        "pass the folder peft's save_pretrained wrote")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(str(adapter_dir / "adapter_config.json"), f"describes a {cfg['peft_type']} adapter, not LoRA",
                        "export a LoRA adapter")
    return cfg


def check(target: str, quantize: str | None, adapter_dir: Path, out: Path, *, repo_id: str | None,
          adapter_only: bool, overwrite: bool) -> dict:
    """Every check that can fail before work starts; returns the adapter config."""
    if target not in TARGETS:
        raise UserError(target, "is not an export target", f"use one of: {', '.join(TARGETS)}")
    if quantize not in QUANTIZE:
        raise UserError(quantize, "is not a quantization tuneloop exports", "use int8, or none")
    cfg = read_adapter_config(adapter_dir)
    if target == "vllm":
        problems = targets.vllm_problems(cfg)
        if problems:
            raise UserError(str(adapter_dir / "adapter_config.json"),
                            "cannot be served by vLLM: " + "; ".join(problems),
                            "retrain with a plain LoRA (r, lora_alpha, target_modules; no DoRA, bias or "
                            "modules_to_save), or export --target dir/ollama, which merge the adapter instead")
    if quantize and (target == "vllm" or adapter_only):
        raise UserError("int8", "applies to merged weights, and this target exports the adapter alone",
                        "drop --int8 (vLLM quantizes the base itself with --quantization), or export merged weights")
    if adapter_only and target != "hf-hub":
        raise UserError("adapter_only", f"applies to the hf-hub target, not {target}",
                        "use --target vllm for an adapter folder, or drop --adapter-only")
    if target == "hf-hub":
        if not repo_id:
            raise UserError("--repo-id", "is required for the hf-hub target", "pass --repo-id USER/NAME")
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise UserError(repo_id, f"is not a valid Hub repo id ({e})", "use USER/NAME or ORG/NAME") from e
        if "/" not in repo_id:
            raise UserError(repo_id, "has no namespace", "use USER/NAME or ORG/NAME")
    resolved, source = out.resolve(), adapter_dir.resolve()
    if resolved == source or source.is_relative_to(resolved):
        raise UserError(str(out), "would replace the adapter being exported",
                        "choose an --out outside the adapter folder")
    if out.exists() and not out.is_dir():
        raise UserError(str(out), "exists and is not a folder", "choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(str(out), "already exists and is not empty", "choose another --out, or pass --overwrite")
    return cfg


def default_name(version: str | None, adapter_dir: Path) -> str:
    raw = f"tuneloop-{version}" if version else f"tuneloop-{adapter_dir.resolve().name}"
    return re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-.")


def file_list(folder: Path) -> list[dict]:
    return [{"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]


def publish(staged: Path, out: Path, overwrite: bool) -> None:
    """Rename staged into out; an existing out (allowed by `overwrite`) is moved aside first, then deleted."""
    old = None
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:  # it appeared while we were exporting
            raise UserError(str(out), "appeared while exporting", "choose another --out, or pass --overwrite")
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        os.rename(out, old / "previous")
    elif out.is_dir():
        out.rmdir()
    try:
        os.rename(staged, out)
    except OSError:
        if old:
            os.rename(old / "previous", out)
            old.rmdir()
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def export_version(base: str, adapter_dir: str | Path, target: str, out: str | Path, *, quantize: str | None = None,
                   name: str | None = None, repo_id: str | None = None, endpoint: str | None = None,
                   token: str | None = None, private: bool = True, adapter_only: bool = False,
                   base_name: str | None = None, version: str | None = None, overwrite: bool = False,
                   log=print) -> ExportResult:
    """Export the adapter in `adapter_dir`, trained on `base` (hub id or local path), for `target`.

    dir: the merged model (int8 with quantize="int8"); vllm: the adapter for `--enable-lora`;
    ollama: a Modelfile over a GGUF or the merged folder; hf-hub: the merged model (or the adapter,
    with adapter_only) pushed to `repo_id`, private unless private=False. The local folder `out` is
    written for every target and holds README.md and tuneloop-export.json.
    """
    adapter_dir, out = Path(adapter_dir), Path(out)
    cfg = check(target, quantize, adapter_dir, out, repo_id=repo_id, adapter_only=adapter_only, overwrite=overwrite)
    name = name or default_name(version, adapter_dir)
    int8 = quantize == "int8"
    notes: list[str] = []
    where = (lambda p: Path(p).name) if target == "hf-hub" else str  # no local paths in a pushed manifest
    staged = staging_dir(out.parent, out.name)
    try:
        gguf = None
        if target == "vllm" or adapter_only:
            served_on = (base_name or base) if target == "hf-hub" else base  # a Hub id, not a local path, when pushed
            done = targets.write_adapter(adapter_dir, cfg, served_on, staged)
        elif target == "ollama":
            done, gguf, notes = write_ollama(base, adapter_dir, staged, out, name=name, int8=int8, log=log)
        else:
            from tuneloop.export.merge import write_merged

            done = write_merged(base, adapter_dir, staged, int8=int8, log=log)
        context = dict(target=target, name=name, base=base, base_name=base_name or base, version=version,
                       adapter=adapter_dir.resolve().name, out=out.resolve(), cfg=cfg, done=done, gguf=gguf,
                       int8=int8, notes=notes, repo_id=repo_id, adapter_only=adapter_only)
        atomic_write_text(staged / "README.md", readme.render(**context))
        files = file_list(staged)
        manifest = {
            "format": 1, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "target": target,
            "source": {"version": version, "adapter_dir": where(adapter_dir),
                       "adapter_sha256": sha256_file(adapter_dir / "adapter_model.safetensors"),
                       "lora": {k: cfg.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora")}},
            "base_model": {"name": base_name or base, "resolved": where(base) if Path(base).exists() else base},
            "options": {"quantize": quantize, "name": name, "repo_id": repo_id, "endpoint": endpoint,
                        "private": private if target == "hf-hub" else None, "adapter_only": adapter_only},
            "result": done | ({"gguf": gguf} if gguf else {}), "notes": notes, "files": files,
        }
        atomic_write_text(staged / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
        publish(staged, out, overwrite)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result = ExportResult(target, out, files, notes, readme.commands(**context))
    log(f"exported {len(files) + 1} file(s), {result.total_bytes / 1e6:.2f} MB, to {out}")
    for note in notes:
        log(f"note: {note}")
    if target == "hf-hub":
        result.commit_url = targets.push_folder(out, repo_id, endpoint=endpoint, token=token, private=private,
                                                message=f"tuneloop export of {version or name}", log=log)
        log(f"pushed: {result.commit_url}")
    return result


def write_ollama(base: str, adapter_dir: Path, staged: Path, out: Path, *, name: str, int8: bool, log=print):
    """Modelfile over model.gguf when llama.cpp's converter is found, else over the merged safetensors folder."""
    from tuneloop.models.base import load_tokenizer
    from tuneloop.export.merge import write_merged

    converter = targets.find_gguf_converter()
    done = write_merged(base, adapter_dir, staged / "model", int8=False, log=log)
    tok = load_tokenizer(str(staged / "model"))
    notes, gguf = [], None
    if converter:
        outtype = "q8_0" if int8 else "f16"
        targets.convert_to_gguf(converter, staged / "model", staged / "model.gguf", outtype, log=log)
        shutil.rmtree(staged / "model")
        gguf = {"file": "model.gguf", "outtype": outtype, "converter": Path(converter[-1]).name}
        source = "./model.gguf"
    else:
        notes.append(targets.gguf_missing_note(out.resolve(), int8))
        source = "./model"
    text, note = targets.modelfile(source, tok, f"written by tuneloop export ({name}); build: "
                                   f"{readme.ollama_create(name, int8 and not gguf)}")
    if note:
        notes.append(note)
    (staged / "Modelfile").write_text(text)
    return done, gguf, notes
