"""The text stages as functions of the config: what ``selfsup tokenizer | pretrain | finetune | evaluate | export``
run (the CLI only parses arguments and prints). Each reads its inputs from the paths in the config, writes its
outputs atomically, logs to the tracker and returns the metrics it wrote.

    tokenizer_stage   corpus -> models/tokenizer/, artifacts/tokenizer/metrics.json
    pretrain_stage    corpus + tokenizer -> models/mlm/, artifacts/pretrain/ (metrics, loss/val CSVs, plot)
    finetune_stage    task's train/validation + encoder -> models/finetune/<task>/{pretrained,scratch}/,
                      artifacts/finetune/<task>/metrics.json
    finetune_classical_stage
                      task's train/validation -> models/classical/<task>/ (TF-IDF + linear model),
                      artifacts/finetune_classical/<task>/metrics.json
    evaluate_stage    task's test split + the three arms -> artifacts/evaluate/<task>/
    label_efficiency_stage
                      the three arms at shares of the labels, several seeds -> artifacts/label_efficiency/
    export_stage      pretrained classifier -> models/onnx/<task>/ (parity-checked), artifacts/export/<task>/
    simcse_stage      corpus + MLM encoder -> models/simcse/ (SimCSE sentence encoder), artifacts/simcse/
    retrieval_stage   knowledge base, intent and topic splits, three embedding methods -> models/index/,
                      artifacts/retrieval/metrics.json
    export_embedder_stage
                      SimCSE encoder + indexes -> models/onnx/embedder/ (parity-checked), artifacts/export_embedder/

Registration (and the quality gate) is ``selfsup.registry``'s: the ``register`` stage, after every export.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from selfsup.config import Config, ConfigError, FinetuneTaskConfig, TaskData
from selfsup.fileio import write_csv, write_json


def task_spec(cfg: Config, task: str) -> tuple[TaskData, FinetuneTaskConfig]:
    """The data and fine-tuning settings of a declared task; ``ConfigError`` for an unknown one."""
    if task not in cfg.data.tasks:
        raise ConfigError(f"unknown task {task!r}; declared under data.tasks: {sorted(cfg.data.tasks)}")
    if task not in cfg.finetune.tasks:
        raise ConfigError(f"finetune.tasks.{task}: no fine-tuning settings for task {task!r}")
    return cfg.data.tasks[task], cfg.finetune.tasks[task]


def tokenizer_stage(cfg: Config, params_file: Path) -> dict:
    """Train the WordPiece tokenizer on the corpus; report how well it fits tweets (the tasks' register)."""
    from selfsup.fileio import replace_dir, staging_dir
    from selfsup.text.data import read_corpus
    from selfsup.text.tokenizer import load_tokenizer, save_hf_tokenizer, train_wordpiece
    from selfsup.tracking import open_run

    start = time.perf_counter()
    docs = read_corpus(cfg.data.corpus)
    tokenizer = train_wordpiece((text for _, text in docs), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency,
                                cfg.tokenizer.lowercase)
    out = Path(cfg.tokenizer.out_dir)
    staging = staging_dir(out)
    save_hf_tokenizer(tokenizer, staging, cfg.pretrain.model.max_position)
    replace_dir(staging, out)
    sample = [text for source, text in docs if source == "tweets"][:2000] or [t for _, t in docs[:200]]
    fast = load_tokenizer(out)
    tokenized = [fast.tokenize(t) for t in sample]
    pieces = sum(map(len, tokenized))
    words = sum(len(t.split()) for t in sample)
    unk = sum(tokens.count("[UNK]") for tokens in tokenized)
    metrics = {"vocab_size": len(fast), "pieces_per_word_tweets": pieces / max(words, 1),
               "unk_rate_tweets": unk / max(pieces, 1), "seconds": time.perf_counter() - start}
    write_json(Path("artifacts/tokenizer/metrics.json"), metrics)
    with open_run(cfg, "tokenizer", params_file, cfg.tokenizer) as tracker:
        tracker.log_metrics(metrics)
    return metrics


def pretrain_stage(cfg: Config, params_file: Path, checkpoint_dir: Path):
    """Masked-language-model pretraining; writes metrics.json, loss.csv, val.csv and loss.png for DVC."""
    from selfsup.distributed import is_main_process
    from selfsup.text.pretrain_mlm import pretrain_mlm
    from selfsup.tracking import open_run

    pc = cfg.pretrain
    metrics_dir = Path(pc.metrics_dir)
    if not is_main_process():  # torchrun: the other processes train alongside; rank 0 alone tracks and writes
        return pretrain_mlm(pc, Path(cfg.data.corpus), Path(cfg.tokenizer.out_dir), checkpoint_dir)
    with open_run(cfg, "pretrain_mlm", params_file, pc) as tracker:
        result = pretrain_mlm(pc, Path(cfg.data.corpus), Path(cfg.tokenizer.out_dir), checkpoint_dir, tracker)
        write_json(metrics_dir / "metrics.json",
                   {k: v for k, v in result.__dict__.items() if k not in ("history", "evals")})
        write_csv(metrics_dir / "loss.csv", ["step", "train_loss"],
                  [(h["step"], f"{h['loss']:.5f}") for h in result.history])
        write_csv(metrics_dir / "val.csv", ["step", "val_loss", "val_perplexity"],
                  [(e["step"], f"{e['val_loss']:.5f}", f"{e['val_perplexity']:.3f}") for e in result.evals])
        _plot_pretrain(result, metrics_dir / "loss.png")
        tracker.log_metrics({"final_val_loss": result.val_loss, "final_val_perplexity": result.val_perplexity,
                             "mean_tokens_per_s": result.tokens_per_second})
        tracker.log_artifact(metrics_dir)
    return result


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


def finetune_stage(cfg: Config, params_file: Path, task: str) -> dict:
    """Fine-tune ``task`` from the pretrained encoder (self-trained on unlabeled texts where
    ``finetune.tasks.<task>.self_training.enabled``) and from scratch (same settings); validation summary."""
    from selfsup.text.model import INITS
    from selfsup.text.self_training import train_pretrained_or_scratch
    from selfsup.tracking import open_run

    spec, task_cfg = task_spec(cfg, task)
    summary = {}
    with open_run(cfg, "finetune", params_file, task_cfg, task=task) as tracker:
        for init in INITS:
            result, report = train_pretrained_or_scratch(
                task, init, task_cfg, cfg.finetune.loop, cfg.pretrain.model, Path(spec.dir), spec.labels,
                Path(cfg.data.corpus), Path(cfg.tokenizer.out_dir), Path(cfg.pretrain.out_dir),
                Path(task_cfg.out_dir) / task / init, tracker, classical=cfg.finetune.classical)
            if report is not None:
                summary["self_training"] = {k: v for k, v in report.items() if k != "settings"}
            summary[init] = {"val_accuracy": result.val_accuracy, "val_macro_f1": result.val_macro_f1,
                             "best_epoch": result.best_epoch, "train_examples": result.train_examples,
                             "seconds": result.wall_seconds}
            tracker.log_metrics({f"{init}.best_val_macro_f1": result.val_macro_f1,
                                 f"{init}.best_val_accuracy": result.val_accuracy})
    write_json(Path("artifacts/finetune") / task / "metrics.json", summary)
    return summary


def finetune_classical_stage(cfg: Config, params_file: Path, task: str):
    """The classical arm of ``task``: TF-IDF + linear model on exactly the neural arms' training examples."""
    from selfsup.text.classical import train_classical
    from selfsup.tracking import open_run

    spec, task_cfg = task_spec(cfg, task)
    cc = cfg.finetune.classical
    result = train_classical(cc, Path(spec.dir), task_cfg.max_train_examples, cfg.finetune.loop.seed,
                             Path(cc.out_dir) / task)
    write_json(Path("artifacts/finetune_classical") / task / "metrics.json",
               {k: v for k, v in asdict(result).items() if k != "grid"})
    with open_run(cfg, "finetune_classical", params_file, cc, task=task) as tracker:
        tracker.log_params({"chosen_features": result.features, "chosen_model": result.model,
                            "chosen_c": result.c, "chosen_class_weight": result.class_weight})
        tracker.log_metrics({"best_val_macro_f1": result.val_macro_f1, "best_val_accuracy": result.val_accuracy})
    return result


def evaluate_stage(cfg: Config, params_file: Path, task: str) -> dict:
    """Test-set metrics (with bootstrap intervals), per-class reports, confusion matrices and loss curves of the
    three arms of ``task``: pretrained, from scratch and classical."""
    from selfsup.runtime import setup
    from selfsup.text.evaluate import ARMS, evaluate_task
    from selfsup.tracking import open_run

    spec, task_cfg = task_spec(cfg, task)
    out_dir = Path("artifacts/evaluate") / task
    device = setup(cfg.finetune.loop)
    metrics = evaluate_task(task, spec.labels, Path(spec.dir) / "test.csv", Path(task_cfg.out_dir) / task,
                            Path(cfg.finetune.classical.out_dir) / task, task_cfg.max_length, out_dir, device,
                            cfg.finetune.loop.seed, chunk_words=task_cfg.chunk_words, max_chunks=task_cfg.max_chunks)
    with open_run(cfg, "evaluate", params_file, task=task) as tracker:
        for arm in ARMS:
            tracker.log_metrics({f"test_{arm}_{k}": v for k, v in metrics[arm].items()})
            tracker.log_metrics({f"test_{arm}_{k}": v for k, v in metrics["bootstrap"][arm].items()})
        for name in ("pretraining_gain", "gain_over_classical"):
            tracker.log_metrics({f"{name}_{k}": v for k, v in metrics[name].items()})
        tracker.log_artifact(out_dir)
    return metrics


def label_efficiency_stage(cfg: Config, params_file: Path) -> dict:
    """The three arms of every ``finetune.label_efficiency.tasks`` task at each share of the labels and seed;
    metrics.json (mean ± std and error ratios), runs.csv (every run) and label_efficiency.png."""
    import json

    from selfsup.text.label_efficiency import measure, plot, summarize
    from selfsup.tracking import open_run

    lc = cfg.finetune.label_efficiency
    tasks = lc.tasks or list(cfg.finetune.tasks)
    for task in tasks:
        task_spec(cfg, task)
    evaluated = {}
    for task in tasks:
        path = Path("artifacts/evaluate") / task / "metrics.json"
        if path.exists():
            evaluated[task] = json.loads(path.read_text())
    start = time.perf_counter()
    rows = measure(cfg, tasks, lc.fractions, lc.seeds, lc.max_steps, evaluated)
    summary = summarize(rows)
    out = Path(lc.out_dir)
    write_csv(out / "runs.csv", ["task", "fraction", "seed", "labels", "epochs", "arm", "accuracy", "macro_f1"],
              [[r["task"], f"{r['fraction']:g}", r["seed"], r["labels"], r["epochs"], r["arm"],
                f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}"] for r in rows])
    write_json(out / "metrics.json", {**summary, "seconds": time.perf_counter() - start})
    plot(summary, out / "label_efficiency.png")
    with open_run(cfg, "label_efficiency", params_file, lc) as tracker:
        for task, shares in summary.items():
            for share, entry in shares.items():
                tracker.log_metrics({f"{task}.{share}.{arm}_macro_f1_mean": entry[arm]["mean"] for arm in
                                     ("pretrained", "scratch", "classical")})
                tracker.log_metrics({f"{task}.{share}.error_ratio_scratch": entry["error_ratio_scratch"],
                                     f"{task}.{share}.error_ratio_classical": entry["error_ratio_classical"]})
        tracker.log_artifact(out)
    return summary


def export_stage(cfg: Config, params_file: Path, task: str):
    """ONNX export of ``task``'s pretrained classifier; raises ``ExportParityError`` (nothing written) on a
    mismatch with PyTorch."""
    from selfsup.text.data import read_labelled
    from selfsup.text.export import Int8Gate, export_classifier
    from selfsup.tracking import open_run

    spec, task_cfg = task_spec(cfg, task)
    texts, gold = read_labelled(Path(spec.dir) / "test.csv")
    out_dir = Path(cfg.export.out_dir) / task
    result = export_classifier(Path(task_cfg.out_dir) / task / "pretrained", spec.labels, texts, task_cfg.max_length,
                               out_dir, cfg.export.opset, cfg.export.min_label_agreement,
                               cfg.export.max_abs_logit_diff, ort_fusion=cfg.export.ort_fusion, test_labels=gold,
                               int8=Int8Gate.of(cfg.export), chunk_words=task_cfg.chunk_words,
                               max_chunks=task_cfg.max_chunks)
    write_json(Path("artifacts/export") / task / "metrics.json", asdict(result))
    with open_run(cfg, "export", params_file, cfg.export, task=task) as tracker:
        tracker.log_metrics({"onnx_max_abs_logit_diff": result.max_abs_logit_diff,
                             "onnx_label_agreement": result.label_agreement,
                             "onnx_serves_int8": float(result.serve_precision == "int8"),
                             **{f"onnx_{precision}_{key}": report[key] for precision, report in
                                result.precisions.items() for key in ("accuracy", "macro_f1", "label_agreement")}})
    return result


def simcse_texts(cfg: Config) -> list[str]:
    """The SimCSE training texts: the configured corpus sources, a seeded sample of at most ``max_texts``."""
    import random

    from selfsup.text.data import read_corpus

    sc = cfg.retrieval.simcse
    docs = [text for source, text in read_corpus(cfg.data.corpus) if source in sc.sources]
    if not docs:
        raise ConfigError(f"retrieval.simcse.sources: no corpus document comes from {sc.sources}")
    if len(docs) > sc.max_texts:
        docs = random.Random(sc.loop.seed).sample(docs, sc.max_texts)
    return docs


def simcse_stage(cfg: Config, params_file: Path) -> dict:
    """Unsupervised SimCSE from the MLM encoder -> models/simcse/, artifacts/simcse/ (metrics, loss curve)."""
    from selfsup.text.simcse import train_simcse
    from selfsup.tracking import open_run

    sc = cfg.retrieval.simcse
    texts = simcse_texts(cfg)
    with open_run(cfg, "simcse", params_file, sc) as tracker:
        result = train_simcse(sc, texts, Path(cfg.pretrain.out_dir), Path(sc.out_dir), tracker)
        metrics = {k: v for k, v in asdict(result).items() if k != "history"}
        write_json(Path(sc.metrics_dir) / "metrics.json", metrics)
        write_csv(Path(sc.metrics_dir) / "loss.csv", ["step", "train_loss"],
                  [(h["step"], f"{h['loss']:.5f}") for h in result.history])
        tracker.log_metrics({"final_loss": result.final_loss, "texts_per_second": result.texts_per_second})
    return metrics


def retrieval_stage(cfg: Config, params_file: Path) -> dict:
    """Answer retrieval and related articles with TF-IDF, mean-pooled MLM and SimCSE embeddings, side by side ->
    artifacts/retrieval/metrics.json; the SimCSE indexes of the knowledge base and the articles -> models/index/."""
    from selfsup.text.data import read_labelled
    from selfsup.text.retrieval import (EncoderEmbedder, TfidfEmbedder, VectorIndex, evaluate_method, kb_texts,
                                        read_knowledge_base)
    from selfsup.tracking import open_run

    rc = cfg.retrieval
    for key in ("messages_task", "articles_task"):  # checked here, so a project without them still loads
        if getattr(rc, key) not in cfg.data.tasks:
            raise ConfigError(f"retrieval.{key}: {getattr(rc, key)!r} is not a declared task; declared: "
                              f"{sorted(cfg.data.tasks)}")
    messages_spec, articles_spec = cfg.data.tasks[rc.messages_task], cfg.data.tasks[rc.articles_task]
    kb = read_knowledge_base(rc.knowledge_base, messages_spec.labels)
    kb_docs = kb_texts(kb, rc.kb_text)
    messages = {split: read_labelled(Path(messages_spec.dir) / f"{split}.csv") for split in ("validation", "test")}
    articles = {split: read_labelled(Path(articles_spec.dir) / f"{split}.csv") for split in ("train", "test")}
    encoders = {name: EncoderEmbedder(name, folder, rc.max_length, rc.chunk_words, rc.max_chunks)
                for name, folder in (("mlm_mean", Path(cfg.pretrain.out_dir)), ("simcse", Path(rc.simcse.out_dir)))}
    makers = {"tfidf": TfidfEmbedder, **{name: (lambda docs, e=e: e) for name, e in encoders.items()}}
    results = {name: evaluate_method(name, make, kb, kb_docs, messages, articles, rc.top_k)
               for name, make in makers.items()}
    metrics = {name: {"answer": r.answer, "answer_validation": r.answer_validation,
                      "articles_precision_at_5": r.articles_precision_at_5} for name, r in results.items()}
    ours = metrics["simcse"]
    for rival in ("tfidf", "mlm_mean"):
        metrics[f"simcse_minus_{rival}"] = {
            "answer_accuracy_at_1": ours["answer"]["accuracy_at_1"] - metrics[rival]["answer"]["accuracy_at_1"],
            "articles_precision_at_5": ours["articles_precision_at_5"] - metrics[rival]["articles_precision_at_5"]}
    metrics["queries"] = {"messages_test": len(messages["test"][0]), "knowledge_base": len(kb),
                          "articles_test": len(articles["test"][0]), "articles_indexed": len(articles["train"][0])}
    write_json(Path(rc.metrics_dir) / "metrics.json", metrics)

    simcse = results["simcse"]  # the vectors it was measured with are the ones served
    VectorIndex(simcse.kb_vectors, [{"id": e["id"], "intent": e["intent"], "question": e["question"],
                                     "answer": e["answer"]} for e in kb]).save(
        Path(rc.out_dir) / "knowledge_base", method="simcse", kb_text=rc.kb_text)
    texts, labels = articles["train"]
    VectorIndex(simcse.article_vectors, [{"id": f"{rc.articles_task}/train/{i}", "topic": y, "text": t[:300]}
                                         for i, (t, y) in enumerate(zip(texts, labels))]).save(
        Path(rc.out_dir) / "articles", method="simcse")
    with open_run(cfg, "retrieval", params_file, rc) as tracker:
        tracker.log_metrics({f"{name}_{key}": value for name, r in results.items()
                             for key, value in {**{f"answer_{k}": v for k, v in r.answer.items()},
                                                "articles_precision_at_5": r.articles_precision_at_5}.items()})
    return metrics


def export_embedder_stage(cfg: Config, params_file: Path) -> dict:
    """The SimCSE encoder as ONNX with the retrieval stage's indexes -> models/onnx/embedder/ (what /v1/answer and
    /v1/similar serve), parity with PyTorch -> artifacts/export_embedder/metrics.json. Raises
    ``ExportParityError`` (nothing written) on a mismatch."""
    from selfsup.text.data import read_labelled
    from selfsup.text.export_embedder import export_embedder
    from selfsup.tracking import open_run

    rc, ec = cfg.retrieval, cfg.retrieval.export
    messages, _ = read_labelled(Path(cfg.data.tasks[rc.messages_task].dir) / "test.csv")
    articles, _ = read_labelled(Path(cfg.data.tasks[rc.articles_task].dir) / "test.csv")
    result = export_embedder(Path(rc.simcse.out_dir), Path(rc.out_dir), Path(ec.out_dir),
                             {"answers": messages, "articles": articles[: ec.parity_articles]}, rc.max_length,
                             rc.chunk_words, rc.max_chunks, cfg.export.opset, cfg.export.ort_fusion,
                             ec.min_top1_agreement, ec.max_abs_diff)
    metrics = asdict(result)
    write_json(Path(ec.metrics_dir) / "metrics.json", metrics)
    with open_run(cfg, "export_embedder", params_file, ec) as tracker:
        tracker.log_metrics({"onnx_max_abs_diff": result.max_abs_diff,
                             **{f"onnx_top1_agreement_{k}": v for k, v in result.top1_agreement.items()}})
    return metrics
