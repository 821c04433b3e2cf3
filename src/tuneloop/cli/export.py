"""`tuneloop export`: the subcommand's parser and handler, for cli.py to add with `add_export_parser(sub)`."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.export.api import TARGETS, read_adapter_config


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    x = subparsers.add_parser(
        "export", help="export a version for vLLM, Ollama, the Hugging Face Hub or a folder",
        description="Merge a registry version's adapter into its base (or keep the adapter for vLLM) and write "
        "safetensors, a README with the commands to use them, and tuneloop-export.json with every file's sha256. "
        "Written atomically; an existing non-empty --out is kept unless --overwrite.")
    x.add_argument("source", metavar="REF_OR_ADAPTER_DIR",
                   help="registry version id (v3) or alias (champion), or an adapter folder")
    x.add_argument("--target", required=True, choices=TARGETS,
                   help="vllm: LoRA folder for --enable-lora; ollama: Modelfile (+ GGUF with llama.cpp); "
                   "hf-hub: push to --repo-id; dir: the merged model")
    x.add_argument("--out", required=True, help="folder to write (for hf-hub: the local copy that is pushed)")
    x.add_argument("--int8", action="store_true",
                   help="int8 weights: tuneloop's weight-only format (dir, hf-hub), GGUF q8_0 (ollama)")
    x.add_argument("--base", help="base model id or path (default: the version's base_model; for an adapter folder, "
                   "the base_model_name_or_path in its adapter_config.json)")
    x.add_argument("--name", help="served model name for vLLM and Ollama (default: tuneloop-<version>)")
    x.add_argument("--repo-id", help="Hub repository, USER/NAME (hf-hub)")
    x.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT, else the public Hugging Face Hub); the token comes "
                   "from HF_TOKEN or `hf auth login`")
    x.add_argument("--public", action="store_true", help="create the Hub repository public (default: private)")
    x.add_argument("--adapter-only", action="store_true", help="push the adapter instead of the merged model (hf-hub)")
    x.add_argument("--registry", help="registry folder or s3://bucket/prefix (default: the configured one)")
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    x.set_defaults(func=cmd_export)
    return x


def resolve_source(source: str, base: str | None, registry: str | None, log=print) -> tuple[Path, str, str | None]:
    """(adapter folder, base model name, version id) for a registry ref or an adapter folder."""
    path = Path(source)
    if path.is_dir():
        if not base:
            base = read_adapter_config(path).get("base_model_name_or_path")
            if not base:
                raise UserError(source, "is an adapter folder that does not name its base model",
                                "pass --base with the model id or path it was trained on")
            log(f"base model from adapter_config.json: {base}")
        return path, base, None
    if "/" in source or path.exists():
        raise UserError(source, "is neither an adapter folder nor a registry version", "pass v3, champion or a folder")
    from tuneloop.registry import open_registry

    reg = open_registry(registry)
    v = reg.get(source)
    if base and base != v.manifest["base_model"]:
        log(f"warning: {v.id} was trained on {v.manifest['base_model']}; exporting on --base {base}")
    # adapter_for checks every file against the manifest's sha256 (and fetches it from S3 if need be)
    return reg.adapter_for(v.id), base or v.manifest["base_model"], v.id


def cmd_export(args) -> int:
    from tuneloop.models.base import resolve_base_model
    from tuneloop.export.api import export_version
    from tuneloop.settings import get_settings

    adapter_dir, base_name, version = resolve_source(args.source, args.base, args.registry)
    result = export_version(
        resolve_base_model(base_name, get_settings().models_dir), adapter_dir, args.target, args.out,
        quantize="int8" if args.int8 else None, name=args.name, repo_id=args.repo_id, endpoint=args.endpoint,
        private=not args.public, adapter_only=args.adapter_only, base_name=base_name, version=version,
        overwrite=args.overwrite)
    for command in result.commands:
        print(f"  {command}")
    print(f"see {Path(args.out) / 'README.md'}")
    return 0
