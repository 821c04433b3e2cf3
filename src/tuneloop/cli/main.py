"""The `tuneloop` command: what an operator types.

This is the entry layer: it may run flows; everything else here calls core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from tuneloop.errors import TuneloopError, UserError

from tuneloop.cli.runflow import import_flow


# -- data ------------------------------------------------------------------------
def cmd_data_validate(args) -> int:
    from tuneloop.data import validate_file

    count = None
    if args.base_model:
        from tuneloop.models.base import load_tokenizer, resolve_base_model
        from tuneloop.models.chat import count_tokens
        from tuneloop.settings import get_settings

        count = count_tokens(load_tokenizer(resolve_base_model(args.base_model, get_settings().models_dir)))
    report = validate_file(args.file, min_examples=args.min_examples, max_tokens=args.max_tokens, count_tokens=count)
    if args.report:
        report.write(Path(args.report))
    for issue in report.issues:
        print(issue)
    verdict = "OK" if report.ok else f"FAILED: {len(report.errors)} problem(s)"
    print(f"{args.file}: {report.lines_read} line(s), {len(report.rows)} valid row(s): {verdict}")
    return 0 if report.ok else 1


# -- train / evaluate -----------------------------------------------------------
def _spec_from_args(args):
    from tuneloop.specs import RetrainSpec, load_yaml_spec, validate_spec

    if args.config:
        spec = load_yaml_spec(args.config, data=args.data)
    elif args.data:
        spec = RetrainSpec(data=Path(args.data))
    else:
        raise UserError("--data/--config", "one of them is required", "pass --data FILE or --config YAML")
    training = spec.training.model_dump()
    for key in ("max_steps", "seed", "epochs"):
        if getattr(args, key, None) is not None:
            training[key] = getattr(args, key)
    return validate_spec(spec.model_dump() | {"training": training}, type(spec))


def cmd_train(args) -> int:
    from tuneloop.models.base import load_tokenizer, resolve_base_model
    from tuneloop.models.chat import count_tokens
    from tuneloop.data import prepare_dataset
    from tuneloop.settings import get_settings
    from tuneloop.training import train_lora

    spec = _spec_from_args(args)
    settings = get_settings()
    base = resolve_base_model(spec.base_model, settings.models_dir)
    ds = prepare_dataset(spec.data, spec.dataset, spec.eval_data, count_tokens(load_tokenizer(base)),
                         spec.dataset.max_tokens or spec.training.max_seq_len, tenant=spec.tenant,
                         method=spec.training.method)
    out = Path(args.out) if args.out else settings.runs_dir / f"train-{ds.version[:12]}"
    result = train_lora(spec.training, base, ds.train, ds.validation, out, resume=not args.no_resume)
    summary = {k: v for k, v in result.to_json().items() if k != "history"}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from tuneloop.data import validate_file
    from tuneloop.errors import DataValidationError
    from tuneloop.evals.run import evaluate_model
    from tuneloop.models.base import resolve_base_model
    from tuneloop.registry import open_registry
    from tuneloop.reports.tables import text_table
    from tuneloop.settings import get_settings
    from tuneloop.specs import EvalSpec

    adapter, base_name, label = args.adapter, args.base_model, "base"
    if args.version:
        reg = open_registry(args.registry)
        v = reg.get(args.version)
        adapter, base_name, label = reg.adapter_for(v.id), v.manifest["base_model"], v.id  # checksums verified
    elif adapter:
        label = str(adapter)
    base = resolve_base_model(base_name, get_settings().models_dir)
    report = validate_file(args.data, min_examples=1)  # every row is an evaluation item (no split, no training)
    if not report.ok:
        raise DataValidationError(args.data, report.errors)
    result = evaluate_model(base, adapter, report.rows, EvalSpec(max_new_tokens=args.max_new_tokens), label)
    print(text_table({label: result.metrics}))
    if args.output:
        from tuneloop.runtime.fsutil import atomic_write_text

        atomic_write_text(args.output, json.dumps(result.to_json(), indent=2))
    return 0


# -- registry -------------------------------------------------------------------
def _version_line(v, aliases: dict) -> str:
    names = ",".join(a for a, vid in aliases.items() if vid == v.id)
    em = v.metrics.get("exact_match")
    tags = " ".join(f"{k}={val}" for k, val in sorted(v.tags.items()))
    return (f"{v.id:<6} {v.status.get('status', 'candidate'):<10} {names:<18} "
            f"exact_match={'-' if em is None else f'{em:.3f}'}  data={v.manifest['dataset_version'][:12]}  "
            f"{v.manifest['created_at']}" + (f"  {tags}" if tags else ""))


def cmd_registry(args) -> int:
    from tuneloop.registry import open_registry
    from tuneloop.registry.query import parse_tag, render_lineage
    from tuneloop.reports.tables import text_table

    reg = open_registry(args.registry, tenant=args.tenant)
    cmd = args.registry_cmd
    if cmd in ("list", "search"):
        rows = reg.list() if cmd == "list" else reg.search(
            tags=[*args.tag], metrics=[*args.metric], base=args.base, status=args.status)
        if not rows:
            print(f"no versions yet in {reg.location}" if cmd == "list" else "no version matches")
        aliases = reg.aliases()
        for v in rows:
            print(_version_line(v, aliases))
    elif cmd == "show":
        v = reg.get(args.ref)
        print(json.dumps({"manifest": v.manifest, "status": v.status, "tags": v.tags,
                          "integrity": reg.verify(v.id) or "ok"}, indent=2, default=str))
    elif cmd == "compare":
        a, b = reg.get(args.a), reg.get(args.b)
        print(text_table({a.id: a.metrics, b.id: b.metrics}))
    elif cmd == "tag":
        if not args.pairs and not args.remove:
            raise UserError(f"tag {args.ref}", "needs at least one KEY=VALUE or --remove KEY",
                            f"e.g. tuneloop registry tag {args.ref} team=search")
        tags = reg.tag(args.ref, dict(parse_tag(t) for t in args.pairs), remove=args.remove)
        print(f"{reg.resolve(args.ref)}: " + (" ".join(f"{k}={v}" for k, v in sorted(tags.items())) or "no tags"))
    elif cmd == "delete":
        vid = reg.resolve(args.ref)
        reg.delete(vid)
        print(f"deleted {vid} from {reg.location}")
    elif cmd == "lineage":
        print(render_lineage(reg.lineage(args.ref)) or f"no versions yet in {reg.location}")
    elif cmd == "audit":
        version = reg.resolve(args.ref) if args.ref else None
        for e in reg.audit_log(version=version, action=args.action, limit=args.limit):
            detail = " ".join(f"{k}={v}" for k, v in sorted(e["details"].items()) if v not in (None, ""))
            print(f"{e['at']}  {e['action']:9} {e['version'] or '-':6} {e['tenant'] or '-':10} {e['actor']}  {detail}")
    elif cmd == "alias":
        if (args.ref is None) == (not args.clear):
            raise UserError(f"alias {args.name}", "needs either a version (REF) or --clear, not both",
                            f"e.g. tuneloop registry alias {args.name} v3")
        kwargs = {}
        if args.expected is not None:  # compare-and-swap: 'none' expects the alias to be unset
            kwargs["expected"] = None if args.expected.lower() in ("", "none") else args.expected
        before = reg.aliases().get(args.name)
        reg.set_alias(args.name, None if args.clear else args.ref, **kwargs)
        print(f"{args.name}: {before or 'unset'} -> {reg.aliases().get(args.name) or 'unset'}")
    return 0


def cmd_report(args) -> int:
    from tuneloop.registry import open_registry
    from tuneloop.reports.summary import summary_from_registry
    from tuneloop.reports.write import write_reports

    reg = open_registry(args.registry)
    version = reg.get(args.version)
    summary = summary_from_registry(reg, version.id)
    out = Path(args.out) if args.out else version.path / "report"
    for kind, path in write_reports(summary, out).items():
        print(f"{kind:<9} {path}")
    return 0


# -- feedback and drift ---------------------------------------------------------
def _load(args, model):
    from tuneloop.specs import load_yaml_spec

    if not args.config:
        raise UserError("--config", "is required", f"pass a YAML file with a {model.__name__} (see deployments/)")
    return load_yaml_spec(args.config, model)


def cmd_feedback_collect(args) -> int:
    from tuneloop.specs import CollectSpec

    spec = _load(args, CollectSpec)
    summary = import_flow("collect_feedback")(spec)
    for row in summary["sources"]:
        print(f"{row['source']}: {row['fetched']} fetched, {row['new']} new, {row['negatives']} negative, "
              f"{row['errors']} skipped")
    for tenant, ds in summary["datasets"].items():
        print(f"dataset {tenant}: {ds['path']} ({ds['sft']} SFT, {ds['preference']} preference pairs)")
    return 0


def cmd_feedback_build(args) -> int:
    from tuneloop.feedback.build import build_feedback_dataset
    from tuneloop.feedback.items import FeedbackPolicy
    from tuneloop.feedback.store import FeedbackStore
    from tuneloop.settings import get_settings

    state = get_settings().state_dir / "feedback"
    ds = build_feedback_dataset(FeedbackStore(state).items(), state / "datasets", tenant=args.tenant,
                                window_days=args.window_days, policy=FeedbackPolicy(args.min_score),
                                license=args.license)
    print(json.dumps({"path": str(ds.path), "version": ds.version, **ds.counts,
                      "redaction": ds.datasheet["redaction"]["counts"]}, indent=2))
    return 0


def cmd_drift(args) -> int:
    from tuneloop.specs import DriftSpec

    spec = _load(args, DriftSpec) if args.config else DriftSpec(tenant=args.tenant)
    result = import_flow("detect_drift")(spec)
    print(json.dumps(result, indent=2, default=str))
    return 0


# -- flows ----------------------------------------------------------------------
def cmd_retrain(args) -> int:
    spec = _spec_from_args(args)
    retrain = import_flow("retrain")
    summary = retrain(spec)
    if "handed_off_to" in summary:
        print(f"handed off to {summary['deployment']} as flow run {summary['handed_off_to']}: {summary['reason']}")
        return 0
    print(summary["decision"]["reason"])
    return 0


def cmd_demo(args) -> int:
    from tuneloop.demo.data import write_demo_data
    from tuneloop.reports.tables import text_table
    from tuneloop.settings import get_settings
    from tuneloop.specs import validate_spec

    import yaml

    t0 = time.perf_counter()
    main = get_settings()
    demo_dir = main.state_dir / "demo"
    if demo_dir.exists():
        shutil.rmtree(demo_dir)  # a demo always starts from an empty registry
    os.environ["TUNELOOP_MODELS_DIR"] = str(main.models_dir)  # keep the cached base across demos
    os.environ["TUNELOOP_STATE_DIR"] = str(demo_dir)
    os.environ.setdefault("PREFECT_HOME", str(main.state_dir / "prefect"))
    paths = write_demo_data(demo_dir / "data", seed=args.seed)
    preset = yaml.safe_load(resources.files("tuneloop").joinpath("assets/demo-preset.yaml").read_text())
    retrain = import_flow("retrain")

    print(f"\n== run 1: retrain on {paths['feedback'].name} (clean feedback) ==")
    one = retrain(validate_spec(preset | {"data": str(paths["feedback"]), "eval_data": str(paths["heldout"])}))
    print(f"\n== run 2: retrain on {paths['corrupted'].name} (deliberately corrupted feedback) ==")
    two = retrain(validate_spec(preset | {"data": str(paths["corrupted"]), "eval_data": str(paths["heldout"])}))

    print("\n== held-out metrics (same {} items) ==".format(one["decision"]["items"]))
    print(text_table({"base": one["incumbent_metrics"], one["version"]: one["candidate_metrics"],
                      two["version"]: two["candidate_metrics"]}))
    gain = one["candidate_metrics"]["exact_match"] - one["incumbent_metrics"]["exact_match"]
    print(f"\nrun 1 {one['version']}: {one['decision']['reason']}")
    print(f"run 2 {two['version']}: {two['decision']['reason']}")
    print(f"\nexact match {one['incumbent_metrics']['exact_match']:.3f} -> {one['candidate_metrics']['exact_match']:.3f} "
          f"(+{gain:.3f}); training {one['training']['tokens_per_s']:,.0f} tokens/s")
    from tuneloop.registry import registry_location

    tenant = preset["tenant"]
    print(f"\nregistry:     {registry_location(tenant)}   (tuneloop registry --tenant {tenant} list, with "
          f"TUNELOOP_STATE_DIR={demo_dir})")
    print(f"tensorboard:  tensorboard --logdir {demo_dir / 'runs'}")
    print(f"prefect UI:   make ui  (PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start), "
          "then http://127.0.0.1:4200")
    print(f"demo took {time.perf_counter() - t0:.1f} s")
    ok = one["promoted"] and gain >= 0.30 and not two["promoted"]
    if not ok:
        print("UNEXPECTED: the demo should promote run 1 by >= 0.30 exact match and reject run 2", file=sys.stderr)
    return 0 if ok else 1


# -- parser -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneloop", description=__doc__.splitlines()[0] + " Retrain, evaluate and "
                                "promote LoRA adapters from user feedback.")
    sub = p.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="check feedback files").add_subparsers(dest="data_cmd", required=True)
    v = data.add_parser("validate", help="report every problem in a JSONL file, by line; exit 1 if any",
                        description="Check OpenAI chat JSONL or prompt/completion JSONL against OpenAI's rules: "
                        "at least N examples, valid roles, an assistant message, non-empty content, token length.")
    v.add_argument("file")
    v.add_argument("--min-examples", type=int, default=10, help="fewest valid rows allowed (default 10)")
    v.add_argument("--base-model", default=None,
                   help="count tokens with this model's tokenizer (e.g. tuneloop/tiny-llama); off by default")
    v.add_argument("--max-tokens", type=int, default=512, help="token limit per row with --base-model (default 512)")
    v.add_argument("--report", help="also write the report as JSON here")
    v.set_defaults(func=cmd_data_validate)

    def spec_args(sp):
        sp.add_argument("--config", help="YAML file with a RetrainSpec (see deployments/)")
        sp.add_argument("--data", help="feedback JSONL (overrides the config's data)")

    t = sub.add_parser("train", help="train a LoRA adapter (no Prefect, no registry)",
                       description="Validate the data and train an adapter; resumes from the last checkpoint "
                       "in --out unless --no-resume. Prints the result as JSON.")
    spec_args(t)
    t.add_argument("--out", help="run folder (default: the state folder's runs/)")
    t.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score a model on a JSONL set",
                       description="Exact match, token F1, BLEU, ROUGE-L and perplexity of the base model, "
                       "an adapter folder, or a registry version on every row of --data.")
    e.add_argument("--data", required=True)
    e.add_argument("--version", help="registry version or alias (champion, challenger)")
    e.add_argument("--registry", help="registry folder or s3://BUCKET/PREFIX for --version")
    e.add_argument("--adapter", help="adapter folder")
    e.add_argument("--base-model", default="tuneloop/tiny-llama")
    e.add_argument("--max-new-tokens", type=int, default=64)
    e.add_argument("--output", help="write all per-item results as JSON here")
    e.set_defaults(func=cmd_evaluate)

    from tuneloop.registry.core import ALIASES

    where = "registry folder or s3://BUCKET/PREFIX (default: TUNELOOP_REGISTRY, TUNELOOP_REGISTRY_DIR, " \
            "or the state folder's)"
    r = sub.add_parser("registry", help="inspect, search, tag and delete model versions",
                       description="Versions with manifests, sha256 checksums, lineage, tags and aliases, in a "
                       "folder or on S3 (endpoint: AWS_ENDPOINT_URL). --registry goes before or after the command.")
    r.add_argument("--registry", help=where)
    tenant_help = "whose registry (default: default); without --registry, each tenant's own: " \
                  "TUNELOOP_TENANT_REGISTRY, or the configured registry's tenants/NAME"
    r.add_argument("--tenant", default="default", help=tenant_help)
    rs = r.add_subparsers(dest="registry_cmd", required=True)

    def rcmd(name: str, **kw):
        sp = rs.add_parser(name, **kw)
        sp.add_argument("--registry", default=argparse.SUPPRESS, help=where)
        sp.add_argument("--tenant", default=argparse.SUPPRESS, help=tenant_help)
        return sp

    rcmd("list", help="every version with status, aliases and exact match")
    sh = rcmd("show", help="a version's manifest, status, tags and file integrity")
    sh.add_argument("ref", help="version id (v3) or alias (champion)")
    c = rcmd("compare", help="metrics of two versions side by side")
    c.add_argument("a")
    c.add_argument("b")
    se = rcmd("search", help="versions matching every filter given",
              description="Filters combine with AND; repeat --tag and --metric for more.")
    se.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    se.add_argument("--metric", action="append", default=[], metavar="COND",
                    help="a metric condition such as 'exact_match>=0.8' (>= <= > < == !=)")
    se.add_argument("--base", help="exact base model name, e.g. tuneloop/tiny-llama")
    se.add_argument("--status", help="candidate, champion, rejected or retired")
    tg = rcmd("tag", help="add or change tags (KEY=VALUE ...) and remove others (--remove KEY)")
    tg.add_argument("ref")
    tg.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
    tg.add_argument("--remove", action="append", default=[], metavar="KEY")
    dl = rcmd("delete", help="delete a version no alias points to (its id is never reused)")
    dl.add_argument("ref")
    ln = rcmd("lineage", help="the version graph: parent, dataset version, feedback window",
              description="Without REF, every version as a tree; with REF, it and its ancestors.")
    ln.add_argument("ref", nargs="?")
    au = rcmd("audit", help="the append-only log of who registered, promoted, rejected, deleted, switched or "
                             "rolled back what, and when")
    au.add_argument("ref", nargs="?", help="only this version's entries")
    au.add_argument("--action", help="only entries of this action (register, promote, rollback, delete, ...)")
    au.add_argument("--limit", type=int, default=None, help="the newest N entries")
    al = rcmd("alias", help="point an alias (champion, challenger, production) at a version, or clear it",
              description="A compare-and-swap with --expected: refused if the alias moved meanwhile.")
    al.add_argument("name", choices=ALIASES)
    al.add_argument("ref", nargs="?")
    al.add_argument("--clear", action="store_true")
    al.add_argument("--expected", metavar="VERSION", help="only if the alias points here now ('none': unset)")
    r.set_defaults(func=cmd_registry)

    fb = sub.add_parser("feedback", help="collect feedback and build datasets from it").add_subparsers(
        dest="feedback_cmd", required=True)
    fc = fb.add_parser("collect", help="run collect-feedback once",
                       description="Fetch what is new from every source in the config (files, LangSmith, Langfuse), "
                       "emit tuneloop.feedback.negative events, rebuild each tenant's dataset.")
    fc.add_argument("--config", help="YAML file with a CollectSpec")
    fc.set_defaults(func=cmd_feedback_collect)
    fbd = fb.add_parser("build", help="build a tenant's dataset from the stored feedback",
                        description="PII-redacted, deduplicated SFT, preference and negative files with a datasheet "
                        "and lineage, under <state>/feedback/datasets/<tenant>/.")
    fbd.add_argument("--tenant", default="default")
    fbd.add_argument("--window-days", type=float, default=30)
    fbd.add_argument("--min-score", type=float, default=0.7, help="scores below are negative (default 0.7)")
    fbd.add_argument("--license", default="unspecified")
    fbd.set_defaults(func=cmd_feedback_build)

    dr = sub.add_parser("drift", help="run detect-drift once",
                        description="Compare recent prompts with the champion's training prompts (classifier "
                        "two-sample test on sentence embeddings); emit tuneloop.drift.detected on drift.")
    dr.add_argument("--config", help="YAML file with a DriftSpec")
    dr.add_argument("--tenant", default="default")
    dr.set_defaults(func=cmd_drift)

    rp = sub.add_parser("report", help="write a version's evaluation report (JSON, Markdown, HTML)",
                        description="Champion vs challenger per metric with paired bootstrap intervals, gate "
                        "checks, benchmarks, judge scores and the loss curves, as report.json/.md/.html.")
    rp.add_argument("version", help="version id or alias")
    rp.add_argument("--registry", help="registry folder or s3://BUCKET/PREFIX (default: the configured one)")
    rp.add_argument("--out", help="folder for the three files (default: <version>/report)")
    rp.set_defaults(func=cmd_report)

    rt = sub.add_parser("retrain", help="run the retrain flow once, locally",
                        description="validate → train → evaluate candidate and champion → gate → move aliases.")
    spec_args(rt)
    rt.set_defaults(func=cmd_retrain)

    d = sub.add_parser("demo", help="the end-to-end demo on the embedded default",
                       description="Builds the tiny base, writes the intent-routing data, and runs retrain twice: "
                       "clean feedback (promoted) then corrupted feedback (rejected).")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    from tuneloop.cli.manage import add_parsers
    from tuneloop.cli.export import add_export_parser

    from tuneloop.cli.up import add_parsers as add_service_parsers

    add_export_parser(sub)
    add_parsers(sub)  # serve, deploy, jobs
    add_service_parsers(sub)  # up, keys
    return p


def _quiet_libraries() -> None:
    """Progress bars and deprecation chatter from libraries drown tuneloop's own progress lines."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient checkpointing.*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("train", "evaluate", "retrain", "demo", "feedback", "drift", "export", "serve", "deploy"):
        _quiet_libraries()
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TuneloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
