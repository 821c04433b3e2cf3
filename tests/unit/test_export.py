"""Export: merge, int8, and the vllm / ollama / hf-hub / dir targets, on the tiny base, offline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from fakes.hf_hub_server import Repo, fake_hf_hub

from tuneloop.errors import TransientError, UserError
from tuneloop.cli.export import add_export_parser
from tuneloop.export import export_version, load_int8_model
from tuneloop.export import api as export_api
from tuneloop.runtime.fsutil import sha256_file

PROMPTS = ["hello there", "what is the weather like today", "book a flight to paris", "cancel my order please"]
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt", ".gguf"}


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def adapter(tiny_base, tmp_path_factory) -> Path:
    """A LoRA on the tiny base with small random non-zero A and B, so merging changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def merged_fp32(tiny_base, adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "merged"
    return export_version(tiny_base, adapter, "dir", out, log=quiet)


def prompt_ids(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)["input_ids"]


def manifest(out: Path) -> dict:
    return json.loads((out / "tuneloop-export.json").read_text())


def assert_manifest_matches(out: Path) -> dict:
    """Every file but the manifest is listed once with its true size and sha256."""
    m = manifest(out)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([f["path"] for f in m["files"]] + ["tuneloop-export.json"])
    for f in m["files"]:
        assert sha256_file(out / f["path"]) == f["sha256"]
        assert (out / f["path"]).stat().st_size == f["bytes"]
    return m


def no_leftovers(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if p.name.startswith(".")] == []


# -- dir: merge ---------------------------------------------------------------------
def test_merged_logits_equal_base_plus_adapter(tiny_base, adapter, merged_fp32):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneloop.models.base import load_tokenizer

    out = merged_fp32.out
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(adapter)).eval()
    tok = load_tokenizer(str(out))
    with torch.no_grad():
        for text in PROMPTS:
            ids = prompt_ids(tok, text)
            m, a, b = merged(ids).logits, with_adapter(ids).logits, base(ids).logits
            assert (m - a).abs().max().item() < 1e-5
            assert (m - b).abs().max().item() > 0.5  # the adapter really changed the model
    assert tok.chat_template == load_tokenizer(tiny_base).chat_template


def test_merged_folder_is_safetensors_only_with_a_true_manifest(tiny_base, adapter, merged_fp32):
    out = merged_fp32.out
    weights = [p.name for p in out.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    assert weights == ["model.safetensors"]
    m = assert_manifest_matches(out)
    assert m["target"] == "dir" and m["options"]["quantize"] is None
    assert m["source"]["adapter_sha256"] == sha256_file(adapter / "adapter_model.safetensors")
    assert m["source"]["lora"]["r"] == 8 and m["base_model"]["resolved"] == tiny_base
    assert m["result"] == {"merged": True, "dtype": "float32", "quantization": None}
    assert [f["path"] for f in merged_fp32.files] == [f["path"] for f in m["files"]]
    assert f'from_pretrained("{out.resolve()}")' in (out / "README.md").read_text()
    no_leftovers(out.parent)


# -- dir: int8 ----------------------------------------------------------------------
def test_int8_shrinks_and_stays_close_to_the_fp32_merge(tiny_base, adapter, merged_fp32, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.models.base import load_tokenizer

    out = tmp_path / "int8"
    result = export_version(tiny_base, adapter, "dir", out, quantize="int8", log=quiet)
    fp32_bytes = (merged_fp32.out / "model.safetensors").stat().st_size
    int8_bytes = (out / "model.int8.safetensors").stat().st_size
    assert int8_bytes < fp32_bytes / 3.5  # measured 812,208 vs 3,134,120 bytes (3.86x)
    assert [p.name for p in out.iterdir() if p.suffix in WEIGHT_SUFFIXES] == ["model.int8.safetensors"]
    m = assert_manifest_matches(out)
    assert m["result"]["quantization"]["format"] == "tuneloop-int8-v1"
    assert result.total_bytes < merged_fp32.total_bytes / 3

    fp32 = AutoModelForCausalLM.from_pretrained(merged_fp32.out).eval()
    int8 = load_int8_model(out)
    tok = load_tokenizer(str(out))
    agree = total = 0
    with torch.no_grad():
        for text in PROMPTS:
            ids = prompt_ids(tok, text)
            a, b = fp32(ids).logits, int8(ids).logits
            # measured: max |diff| 0.13 on logits spanning about ±12, i.e. ~1% of the range
            assert (a - b).abs().max().item() < 0.25
            assert (a - b).abs().max().item() < 0.02 * a.abs().max().item()
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
            total += ids.shape[1]
            # greedy decoding: along fp32's own continuation, int8 picks the same next token at every step,
            # except where fp32's two best logits are closer than int8's error could bridge (a genuine tie,
            # which an upstream library release can create: seen on a fresh install in 2026-12)
            seq = fp32.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
            fa, fb = fp32(seq).logits[0, ids.shape[1] - 1:-1], int8(seq).logits[0, ids.shape[1] - 1:-1]
            bound = 2 * (fa - fb).abs().max().item()
            top2 = fa.topk(2, dim=-1).values
            differs = fa.argmax(-1) != fb.argmax(-1)
            assert all((top2[i, 0] - top2[i, 1]).item() <= bound for i in differs.nonzero().flatten().tolist())
    assert agree / total >= 0.95  # measured 59/59


def test_int8_folder_is_not_mistaken_for_float_weights(tiny_base, adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "int8"
    export_version(tiny_base, adapter, "dir", out, quantize="int8", log=quiet)
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(out)  # no model.safetensors: int8 codes are never read as floats
    with pytest.raises(UserError, match="model.int8.safetensors"):
        load_int8_model(tmp_path)


# -- vllm ---------------------------------------------------------------------------
def test_vllm_folder_holds_the_adapter_and_the_exact_command(tiny_base, adapter, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "vllm"
    result = export_version(tiny_base, adapter, "vllm", out, version="v3", log=quiet)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "tuneloop-export.json"]
    assert (out / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    cfg = json.loads((out / "adapter_config.json").read_text())
    source = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg == source | {"base_model_name_or_path": tiny_base}
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    command = f"vllm serve {tiny_base} --enable-lora --max-lora-rank 8 --lora-modules tuneloop-v3={out.resolve()}"
    assert result.commands == [command]
    assert command in (out / "README.md").read_text()
    assert '"model": "tuneloop-v3"' in (out / "README.md").read_text()
    assert_manifest_matches(out)
    # the exported folder loads back with peft exactly like the source adapter
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        a = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(out))(ids).logits
        b = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(adapter))(ids).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("change, problem", [
    ({"r": None}, "`r` is missing"),
    ({"lora_alpha": None}, "`lora_alpha` is missing"),
    ({"target_modules": []}, "`target_modules` is missing or empty"),
    ({"r": 1024}, "vLLM serves ranks 1..512"),
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "bias: none"),
])
def test_vllm_refuses_configs_it_cannot_serve(tiny_base, adapter, tmp_path, change, problem):
    bad = tmp_path / "bad-adapter"
    bad.mkdir()
    (bad / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    cfg = json.loads((adapter / "adapter_config.json").read_text()) | change
    (bad / "adapter_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    with pytest.raises(UserError, match="cannot be served by vLLM") as e:
        export_version(tiny_base, bad, "vllm", tmp_path / "out", log=quiet)
    assert problem in e.value.rule and "--target dir" in e.value.fix
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


def test_vllm_max_lora_rank_is_the_smallest_allowed_value():
    from tuneloop.export.targets import vllm_max_lora_rank

    assert [vllm_max_lora_rank(r) for r in (1, 8, 9, 16, 17, 64, 300, 512)] == [1, 8, 16, 16, 32, 64, 320, 512]


# -- ollama -------------------------------------------------------------------------
def test_ollama_without_a_converter_points_at_safetensors_and_says_how_to_finish(
        tiny_base, adapter, tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELOOP_LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    logged = []
    out = tmp_path / "ollama"
    result = export_version(tiny_base, adapter, "ollama", out, quantize="int8", name="intent-bot", log=logged.append)
    modelfile = (out / "Modelfile").read_text()
    assert "\nFROM ./model\n" in modelfile
    template = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"
    assert f'TEMPLATE """{template}"""' in modelfile
    assert 'PARAMETER stop "<|end|>"' in modelfile
    assert (out / "model" / "model.safetensors").is_file() and not (out / "model.gguf").exists()
    [note] = result.notes
    assert "no GGUF written" in note and "TUNELOOP_LLAMA_CPP_DIR" in note
    where = out.resolve()
    assert f"convert_hf_to_gguf.py {where / 'model'} --outfile {where / 'model.gguf'} --outtype q8_0" in note
    assert any(line == f"note: {note}" for line in logged)  # said aloud, not only written down
    assert result.commands == [f"cd {out.resolve()}", "ollama create intent-bot -f Modelfile --quantize q8_0",
                               "ollama run intent-bot"]
    readme = (out / "README.md").read_text()
    assert "ollama create intent-bot -f Modelfile --quantize q8_0" in readme and "no GGUF written" in readme
    m = assert_manifest_matches(out)
    assert m["notes"] == [note] and "gguf" not in m["result"]


FAKE_CONVERTER = """
import json, sys, pathlib
args = sys.argv[1:]
model = pathlib.Path(args[0])
out = pathlib.Path(args[args.index("--outfile") + 1])
outtype = args[args.index("--outtype") + 1]
if (model.parent.parent / "FAIL").exists():
    sys.exit("ERROR: BPE pre-tokenizer was not recognized")
assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
arch = json.loads((model / "config.json").read_text())["architectures"][0]
out.write_bytes(b"GGUF" + json.dumps({"outtype": outtype, "arch": arch}).encode())
"""


def test_ollama_with_llama_cpp_writes_gguf(tiny_base, adapter, tmp_path, monkeypatch):
    llama_cpp = tmp_path / "llama.cpp"
    llama_cpp.mkdir()
    (llama_cpp / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    monkeypatch.setenv("TUNELOOP_LLAMA_CPP_DIR", str(llama_cpp))
    out = tmp_path / "ollama"
    result = export_version(tiny_base, adapter, "ollama", out, quantize="int8", name="intent-bot", log=quiet)
    gguf = (out / "model.gguf").read_bytes()
    assert gguf.startswith(b"GGUF") and json.loads(gguf[4:]) == {"outtype": "q8_0", "arch": "LlamaForCausalLM"}
    assert not (out / "model").exists()  # the GGUF replaces the intermediate safetensors
    assert "\nFROM ./model.gguf\n" in (out / "Modelfile").read_text()
    assert result.notes == []
    assert result.commands[1] == "ollama create intent-bot -f Modelfile"  # already q8_0: no --quantize
    assert manifest(out)["result"]["gguf"] == {"file": "model.gguf", "outtype": "q8_0",
                                               "converter": "convert_hf_to_gguf.py"}
    assert_manifest_matches(out)

    (tmp_path / "FAIL").write_text("")  # the converter now fails: the error says why, nothing is written
    with pytest.raises(UserError, match="BPE pre-tokenizer was not recognized") as e:
        export_version(tiny_base, adapter, "ollama", tmp_path / "again", log=quiet)
    assert "unset TUNELOOP_LLAMA_CPP_DIR" in e.value.fix
    assert not (tmp_path / "again").exists()
    no_leftovers(tmp_path)

    monkeypatch.setenv("TUNELOOP_LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="holds no convert_hf_to_gguf.py"):
        export_version(tiny_base, adapter, "ollama", tmp_path / "again", log=quiet)


# -- hf-hub -------------------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest turns the Hub off
    with fake_hf_hub() as fake:
        yield fake


def test_hub_push_uploads_every_file_byte_for_byte(tiny_base, adapter, tmp_path, hub):
    out = tmp_path / "hub"
    result = export_version(tiny_base, adapter, "hf-hub", out, quantize="int8", repo_id="tester/intent-bot",
                            endpoint=hub.url, token=hub.token, version="v3", log=quiet)
    repo = hub.repos["tester/intent-bot"]
    assert repo.private  # private unless asked otherwise
    m = assert_manifest_matches(out)
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert repo.files == local
    for f in m["files"]:
        assert sha256_file(out / f["path"]) == f["sha256"]
    assert "model.int8.safetensors" in repo.files
    assert result.commit_url == f"{hub.url}/tester/intent-bot/commit/{repo.sha}"
    assert repo.commits[-1]["summary"] == "tuneloop export of v3"
    assert ("POST", "/api/validate-yaml") in hub.requests  # the model card's front matter was checked
    assert repo.files["README.md"].startswith(b"---\ntags:\n- tuneloop\n- merged-lora\n- int8\n---\n")
    assert m["source"]["adapter_dir"] == "adapter"  # no local paths in what is pushed
    assert m["base_model"]["resolved"] == Path(tiny_base).name
    assert hub.token not in json.dumps(m)

    # the adapter alone, to a second repo that already exists (create_repo exist_ok)
    hub.repos["tester/intent-lora"] = Repo("tester/intent-lora", "model", private=False)
    export_version(tiny_base, adapter, "hf-hub", tmp_path / "hub-adapter", adapter_only=True,
                   repo_id="tester/intent-lora", endpoint=hub.url, token=hub.token, base_name="tuneloop/tiny-llama",
                   log=quiet)
    files = hub.repos["tester/intent-lora"].files
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "tuneloop-export.json"]
    assert files["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()
    assert files["README.md"].startswith(b"---\nlibrary_name: peft\ntags:")
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "tuneloop/tiny-llama"
    assert tiny_base.encode() not in files["README.md"] + files["tuneloop-export.json"]


def test_hub_errors_are_clear_and_keep_the_local_export(tiny_base, adapter, tmp_path, hub, monkeypatch):
    import huggingface_hub.constants

    out = tmp_path / "hub"
    with pytest.raises(UserError, match=r"refused the push \(401\)") as e:
        export_version(tiny_base, adapter, "hf-hub", out, repo_id="tester/x", endpoint=hub.url, token="wrong",
                       log=quiet)
    assert "HF_TOKEN" in e.value.fix and f"hf upload tester/x {out}" in e.value.fix
    assert_manifest_matches(out)  # the export itself is complete; only the push failed

    hub.fail_next(1)
    with pytest.raises(TransientError, match="503"):
        export_version(tiny_base, adapter, "hf-hub", out, repo_id="tester/x", endpoint=hub.url, token=hub.token,
                       overwrite=True, log=quiet)

    with pytest.raises(TransientError, match="ConnectError"):  # nothing listens on port 9
        export_version(tiny_base, adapter, "hf-hub", out, repo_id="tester/x", endpoint="http://127.0.0.1:9",
                       token=hub.token, overwrite=True, log=quiet)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        export_version(tiny_base, adapter, "hf-hub", out, repo_id="tester/x", endpoint=hub.url, token=hub.token,
                       overwrite=True, log=quiet)
    assert hub.repos == {}


# -- bad input, atomicity -------------------------------------------------------------
def test_bad_input_raises_user_errors_and_writes_nothing(tiny_base, adapter, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not loaded")
    out = tmp_path / "out"
    cases = [
        (dict(adapter_dir=adapter, target="gguf"), "is not an export target"),
        (dict(adapter_dir=tmp_path / "missing", target="dir"), "no adapter_config.json"),
        (dict(adapter_dir=pickled, target="dir"), "is a pickle file"),
        (dict(adapter_dir=adapter, target="hf-hub"), "is required for the hf-hub target"),
        (dict(adapter_dir=adapter, target="hf-hub", repo_id="no-namespace"), "has no namespace"),
        (dict(adapter_dir=adapter, target="hf-hub", repo_id="bad//id"), "is not a valid Hub repo id"),
        (dict(adapter_dir=adapter, target="vllm", quantize="int8"), "applies to merged weights"),
        (dict(adapter_dir=adapter, target="dir", quantize="int4"), "is not a quantization"),
        (dict(adapter_dir=adapter, target="dir", adapter_only=True), "applies to the hf-hub target"),
    ]
    for kwargs, rule in cases:
        adapter_dir, target = kwargs.pop("adapter_dir"), kwargs.pop("target")
        with pytest.raises(UserError) as e:
            export_version(tiny_base, adapter_dir, target, out, log=quiet, **kwargs)
        assert rule in e.value.rule, (target, kwargs, e.value)
        assert e.value.fix
    with pytest.raises(UserError, match="would replace the adapter"):
        export_version(tiny_base, adapter, "dir", adapter.parent, overwrite=True, log=quiet)
    assert not out.exists()
    no_leftovers(tmp_path)


def test_existing_output_is_kept_unless_overwrite(tiny_base, adapter, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty"):
        export_version(tiny_base, adapter, "vllm", out, log=quiet)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_version(tiny_base, adapter, "vllm", out, overwrite=True, log=quiet)
    assert not (out / "keep.txt").exists()
    assert_manifest_matches(out)
    no_leftovers(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_version(tiny_base, adapter, "vllm", empty, log=quiet)  # an empty folder is fine
    assert_manifest_matches(empty)


def test_a_failure_midway_leaves_nothing_behind(tiny_base, adapter, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("previous export")

    def boom(**_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_api.readme, "render", boom)  # after the merged weights are written
    with pytest.raises(RuntimeError, match="disk full"):
        export_version(tiny_base, adapter, "dir", out, overwrite=True, log=quiet)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    no_leftovers(tmp_path)


# -- CLI ----------------------------------------------------------------------------
def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tuneloop")
    add_export_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exports_a_registry_version_and_an_adapter_folder(tiny_base, adapter, tmp_path, state_dir, capsys):
    from tuneloop.errors import ChecksumError, NotFoundError
    from tuneloop.registry import LocalRegistry
    from tuneloop.specs import TINY_BASE

    registry = tmp_path / "registry"
    LocalRegistry(registry).create_version(adapter, base_model=TINY_BASE, dataset_version="d" * 64,
                                           parent_version=None, spec={}, metrics={})
    out = tmp_path / "vllm"
    assert run_cli(["export", "v1", "--target", "vllm", "--out", str(out), "--registry", str(registry)]) == 0
    m = manifest(out)
    assert m["source"]["version"] == "v1" and m["base_model"] == {"name": TINY_BASE, "resolved": tiny_base}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_base
    printed = capsys.readouterr().out
    assert f"--lora-modules tuneloop-v1={out.resolve()}" in printed and "README.md" in printed

    # an adapter folder: the base comes from its adapter_config.json, or --base
    out2 = tmp_path / "merged"
    assert run_cli(["export", str(adapter), "--target", "dir", "--out", str(out2), "--int8"]) == 0
    assert manifest(out2)["base_model"]["name"] == tiny_base and (out2 / "model.int8.safetensors").is_file()

    with pytest.raises(NotFoundError):
        run_cli(["export", "v9", "--target", "dir", "--out", str(tmp_path / "x"), "--registry", str(registry)])

    stored = LocalRegistry(registry).get("v1").adapter_dir / "adapter_model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")  # tampered after registration: never exported
    with pytest.raises(ChecksumError):
        run_cli(["export", "v1", "--target", "dir", "--out", str(tmp_path / "x"), "--registry", str(registry)])
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):  # argparse rejects an unknown target itself
        run_cli(["export", "v1", "--target", "gguf", "--out", str(tmp_path / "x")])
