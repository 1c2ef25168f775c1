"""The kinds of model the registry holds, in one table: how each is named, what its registration reads and
records, how the gate judges it and which metrics ``selfsup registry list`` shows. A new kind of model (say, a
sentence embedder) is one more ``ModelKind`` here, not another ``if task == ...`` branch elsewhere.

    text   one per declared task (data.tasks): <export.registered_model_prefix>-<task>
    image  the image encoder + probe, registry task ``image-encoder``: vision.export.registered_model
    embedder  the sentence embedder + its indexes, registry task ``embedder``: retrieval.export.registered_model
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from selfsup.config import EMBEDDER_INDEXES, EMBEDDER_TASK, IMAGE_TASK, Config
from selfsup.registry.gate import Verdict, judge, judge_embedder, judge_image


class RegistryError(RuntimeError):
    """A registry action was refused; the message says why."""


@dataclass
class ExportFiles:
    """What registering one task's model reads."""

    folder: Path  # model.onnx and the files registered with it
    extra_files: list[str]
    reports: dict[str, Path]  # stage reports (metrics.json) by role: the kind's ``metrics`` arguments
    # the files whose content identifies the version (a model already registered with the same content is not
    # registered again); the embedder's indexes count, so a new knowledge base is a new version
    identity: tuple[str, ...] = ("model.onnx",)

    @property
    def inputs(self) -> list[Path]:
        return [self.folder / "model.onnx", *self.reports.values()]


@dataclass(frozen=True)
class ModelKind:
    modality: str
    model_name: Callable[[Config, str], str]
    export_files: Callable[[Config, str, Path], ExportFiles]  # (cfg, task, artifacts folder)
    metrics: Callable[..., dict[str, float]]  # the version's metric tags, from the reports by role
    tags: Callable[[dict[str, dict], ExportFiles], dict[str, str]]  # extra version tags; may refuse (RegistryError)
    judge: Callable[[Config, str, dict[str, float], dict[str, float] | None], Verdict]
    list_columns: tuple[tuple[str, str], ...]  # (version metric, table header) for ``registry list``


# ------------------------------------------------------------------------------------------------------- text


def text_metrics(evaluation: dict, export: dict) -> dict[str, float]:
    """The metrics a text version carries: pretrained, from-scratch and classical test scores, and ONNX parity."""
    return {
        **{f"test_{k}": float(v) for k, v in evaluation["pretrained"].items()},
        **{f"scratch_test_{k}": float(v) for k, v in evaluation["scratch"].items()},
        **{f"classical_test_{k}": float(v) for k, v in evaluation.get("classical", {}).items()},
        "onnx_label_agreement": float(export["label_agreement"]),
        "onnx_max_abs_logit_diff": float(export["max_abs_logit_diff"]),
    }


def _text_export(cfg: Config, task: str, artifacts: Path) -> ExportFiles:
    return ExportFiles(Path(cfg.export.out_dir) / task, ["tokenizer.json", "labels.json", "export.json"],
                       {"evaluation": artifacts / "evaluate" / task / "metrics.json",
                        "export": artifacts / "export" / task / "metrics.json"})


TEXT = ModelKind(
    modality="text",
    model_name=lambda cfg, task: f"{cfg.export.registered_model_prefix}-{task}",
    export_files=_text_export,
    metrics=text_metrics,
    tags=lambda reports, files: {"modality": "text"},
    judge=lambda cfg, task, metrics, champion: judge(task, metrics, champion, cfg.gate, cfg.export),
    list_columns=(("test_accuracy", "acc"), ("test_macro_f1", "F1"), ("scratch_test_macro_f1", "scr.F1"),
                  ("classical_test_macro_f1", "cls.F1")),
)


# ------------------------------------------------------------------------------------------------------ image


def image_metrics(pretrain: dict, evaluation: dict, export: dict) -> dict[str, float]:
    """The metrics an image-encoder version carries, from the ``pretrain_ssl``, ``evaluate_ssl`` and ``export_ssl``
    reports: held-out kNN and probe accuracy (``probe_accuracy`` is the exported probe, trained on every pool label;
    ``probe_accuracy_<share>`` per label share), the random-init and supervised baselines, the collapse monitor's
    final values and ONNX parity."""
    ssl, rand = evaluation["ssl"], evaluation["random_init"]
    return {
        "knn_accuracy": float(ssl["knn_accuracy"]),
        "probe_accuracy": float(ssl["probe_accuracy"]["1"]),
        "random_init_knn_accuracy": float(rand["knn_accuracy"]),
        "random_init_probe_accuracy": float(rand["probe_accuracy"]["1"]),
        **({"raw_pixels_knn_accuracy": float(evaluation["raw_pixels"]["knn_accuracy"]),
            "raw_pixels_probe_accuracy": float(evaluation["raw_pixels"]["probe_accuracy"]["1"])}
           if "raw_pixels" in evaluation else {}),
        **{f"probe_accuracy_{share}": float(v) for share, v in ssl["probe_accuracy"].items()},
        **{f"supervised_accuracy_{share}": float(v)
           for share, v in evaluation["supervised_from_scratch"]["accuracy"].items()},
        "embedding_std": float(pretrain["embedding_std"]),
        "effective_rank": float(pretrain["effective_rank"]),
        "onnx_label_agreement": float(export["label_agreement"]),
        "onnx_max_abs_diff": float(export["max_abs_diff"]),
    }


def _image_export(cfg: Config, task: str, artifacts: Path) -> ExportFiles:
    vc = cfg.vision
    return ExportFiles(Path(vc.export.out_dir), ["classes.json", "export.json"],
                       {"pretrain": Path(vc.pretrain.metrics_dir) / "metrics.json",
                        "evaluation": Path(vc.evaluate.out_dir) / "metrics.json",
                        "export": artifacts / "export_ssl" / "metrics.json"})


def _image_tags(reports: dict[str, dict], files: ExportFiles) -> dict[str, str]:
    # the reports must describe one encoder: DVC guarantees it, a stage run by hand may not; the method is what
    # pretrain_ssl and evaluate_ssl both record
    methods = {role: reports[role].get("method") for role in ("pretrain", "evaluation")}
    if len(set(methods.values())) != 1:
        raise RegistryError(f"cannot register the image encoder: its reports disagree on the method "
                            f"{methods} ({files.reports['pretrain']} vs {files.reports['evaluation']}); "
                            f"rerun evaluate_ssl and export_ssl (`dvc repro register`)")
    return {"modality": "image", "method": methods["pretrain"]}


IMAGE = ModelKind(
    modality="image",
    model_name=lambda cfg, task: cfg.vision.export.registered_model,
    export_files=_image_export,
    metrics=image_metrics,
    tags=_image_tags,
    judge=lambda cfg, task, metrics, champion: judge_image(metrics, champion, cfg.gate.image, cfg.vision.pretrain,
                                                           cfg.vision.export),
    list_columns=(("knn_accuracy", "kNN"), ("probe_accuracy", "probe"), ("random_init_knn_accuracy", "rnd.kNN"),
                  ("raw_pixels_knn_accuracy", "pix.kNN")),
)


# --------------------------------------------------------------------------------------------------- embedder


def embedder_metrics(retrieval: dict, export: dict) -> dict[str, float]:
    """The metrics an embedder version carries, from the ``retrieval`` and ``export_embedder`` reports: the SimCSE
    embeddings' test answer retrieval (accuracy@1, recall@3, MRR@10) and related-article precision@5, the same for
    TF-IDF cosine and mean-pooled MLM embeddings (``tfidf_`` / ``mlm_mean_``), and ONNX parity (the worst index's
    nearest-entry agreement)."""
    def scores(method: str) -> dict[str, float]:
        return {**{k: float(v) for k, v in retrieval[method]["answer"].items()},
                "articles_precision_at_5": float(retrieval[method]["articles_precision_at_5"])}

    return {**scores("simcse"), **{f"{rival}_{k}": v for rival in ("tfidf", "mlm_mean")
                                   for k, v in scores(rival).items()},
            "onnx_top1_agreement": float(min(export["top1_agreement"].values())),
            "onnx_max_abs_diff": float(export["max_abs_diff"])}


def _embedder_export(cfg: Config, task: str, artifacts: Path) -> ExportFiles:
    index_files = [f"{name}.{ext}" for name in EMBEDDER_INDEXES for ext in ("npy", "jsonl")]
    return ExportFiles(Path(cfg.retrieval.export.out_dir), ["tokenizer.json", "embedder.json", *index_files],
                       {"retrieval": Path(cfg.retrieval.metrics_dir) / "metrics.json",
                        "export": Path(cfg.retrieval.export.metrics_dir) / "metrics.json"},
                       identity=("model.onnx", "tokenizer.json", *index_files))


EMBEDDER = ModelKind(
    modality="text-embedding",
    model_name=lambda cfg, task: cfg.retrieval.export.registered_model,
    export_files=_embedder_export,
    metrics=embedder_metrics,
    tags=lambda reports, files: {"modality": "text-embedding", "method": "simcse"},
    judge=lambda cfg, task, metrics, champion: judge_embedder(metrics, champion, cfg.gate.embedder,
                                                              cfg.retrieval.export),
    list_columns=(("accuracy_at_1", "acc@1"), ("tfidf_accuracy_at_1", "tfidf@1"), ("articles_precision_at_5", "P@5"),
                  ("tfidf_articles_precision_at_5", "tfidfP@5")),
)


# ------------------------------------------------------------------------------------------------------ tasks


def registry_tasks(cfg: Config) -> list[str]:
    """Every task with a registered model: the declared text tasks, the image encoder, the sentence embedder."""
    return [*cfg.data.tasks, IMAGE_TASK, EMBEDDER_TASK]


def kind_of(cfg: Config, task: str) -> ModelKind:
    """The kind of ``task``'s model; ``RegistryError`` for a task the registry does not hold."""
    if task == IMAGE_TASK:
        return IMAGE
    if task == EMBEDDER_TASK:
        return EMBEDDER
    if task in cfg.data.tasks:
        return TEXT
    raise RegistryError(f"unknown task {task!r}; the registry holds the tasks {registry_tasks(cfg)} "
                        f"(data.tasks, {IMAGE_TASK!r} for vision.export.registered_model and {EMBEDDER_TASK!r} for "
                        f"retrieval.export.registered_model)")


def model_name(cfg: Config, task: str) -> str:
    return kind_of(cfg, task).model_name(cfg, task)
