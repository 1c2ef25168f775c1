"""Bad ``params.yaml`` values are rejected before any work starts, with the file, the key path and the rule:
unknown keys, wrong types, negative learning rates, mask probabilities outside (0, 1), a batch larger than the data
and a GPU-only preset on a CPU-only machine. Values checkable from the file alone fail when it loads (every
command); those that need the data or the machine fail when a stage starts (``selfsup.config.preflight``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from selfsup.config import ConfigError, TrainLoopConfig, load_config
from selfsup.config.preflight import STAGE_LOOPS, check_stage_start

from conftest import run_cli

FIXTURE_DATA = Path(__file__).resolve().parents[1] / "fixtures/data"

LOAD_TIME = [
    # unknown keys (a typo never falls back to a default)
    ("pretrain.learning_rte=0.001", "unknown key(s) pretrain.learning_rte; known keys here: ["),
    ("vision.pretrain.loop.presicion=bf16", "unknown key(s) vision.pretrain.loop.presicion"),
    ("finetune.tasks.intent.epoch=3", "unknown key(s) finetune.tasks.intent.epoch"),
    # wrong types
    ("pretrain.batch_size=32.5", "pretrain.batch_size: expected an integer, got 32.5"),
    ("pretrain.learning_rate=fast", "pretrain.learning_rate: expected a number, got 'fast'"),
    ("finetune.tasks.intent.epochs=[3]", "finetune.tasks.intent.epochs: expected an integer, got [3]"),
    ("data.splits=train", "data.splits: expected a list, got 'train'"),
    ("pretrain.loop.progress=yes please", "pretrain.loop.progress: expected true/false, got 'yes please'"),
    ("data.tasks.intent=[a, b]", "data.tasks.intent: expected a mapping, got ['a', 'b']"),
    # negative (or zero) learning rates, everywhere one is declared
    ("pretrain.learning_rate=-0.001", "pretrain.learning_rate: must be > 0, got -0.001"),
    ("pretrain.learning_rate=0", "pretrain.learning_rate: must be > 0, got 0.0"),
    ("finetune.tasks.intent.learning_rate=-1e-4", "finetune.tasks.intent.learning_rate: must be > 0, got -0.0001"),
    ("finetune.tasks.topic.scratch_learning_rate=-5e-4",
     "finetune.tasks.topic.scratch_learning_rate: must be > 0, got -0.0005"),
    ("retrieval.simcse.learning_rate=-1", "retrieval.simcse.learning_rate: must be > 0, got -1.0"),
    ("vision.pretrain.learning_rate=-0.002", "vision.pretrain.learning_rate: must be > 0, got -0.002"),
    ("vision.evaluate.probe_learning_rate=-0.01", "vision.evaluate.probe_learning_rate: must be > 0, got -0.01"),
    ("vision.evaluate.supervised_learning_rate=0",
     "vision.evaluate.supervised_learning_rate: must be > 0, got 0.0"),
    # mask probability outside (0, 1)
    ("pretrain.mlm_probability=0", "pretrain.mlm_probability: must be in (0, 1), got 0.0"),
    ("pretrain.mlm_probability=1", "pretrain.mlm_probability: must be in (0, 1), got 1.0"),
    ("pretrain.mlm_probability=1.5", "pretrain.mlm_probability: must be in (0, 1), got 1.5"),
    ("pretrain.mlm_probability=-0.15", "pretrain.mlm_probability: must be in (0, 1), got -0.15"),
    ("pretrain.mlm_probability=.inf", "pretrain.mlm_probability: must be in (0, 1), got inf"),
    # a batch larger than the data, where the file alone says how much data there is
    ("finetune.tasks.sentiment.batch_size=7000",
     "finetune.tasks.sentiment.batch_size: must be <= max_train_examples (6000): a batch larger than the data, "
     "got 7000"),
    ("vision.data.max_pretrain_images=100",
     "vision.pretrain.batch_size: must be <= data.max_pretrain_images (100): a batch larger than the data, got 128"),
    ("retrieval.simcse.max_texts=32",
     "retrieval.simcse.batch_size: must be <= max_texts (32): a batch larger than the data, got 64"),
    # an unlabeled pool of capped-away training texts, with no cap
    ("finetune.tasks.sentiment.max_train_examples=0",
     "finetune.tasks.sentiment.self_training.pool: 'train_beyond_cap' needs max_train_examples > 0"),
]


@pytest.mark.parametrize("override, message", LOAD_TIME, ids=[o for o, _ in LOAD_TIME])
def test_bad_params_value_is_rejected_with_key_path_and_rule(repo_root, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "params.yaml", [override])
    assert str(err.value).startswith(f"{repo_root / 'params.yaml'}: ")
    assert message in str(err.value)


@pytest.mark.parametrize("override", ["pretrain.mlm_probability=0.999", "pretrain.mlm_probability=0.001",
                                      "finetune.tasks.sentiment.batch_size=6000", "vision.data.max_pretrain_images=256",
                                      "retrieval.simcse.max_texts=64"])
def test_bad_values_stop_at_the_rule_boundary(repo_root, override):
    load_config(repo_root / "params.yaml", [override])


def test_bad_looking_exponent_numbers_are_numbers(repo_root):
    """YAML 1.1 (PyYAML) reads ``1e-4`` without a dot as a string; for a number-typed key it is the number."""
    cfg = load_config(repo_root / "params.yaml",
                      ["pretrain.learning_rate=3e-4", "finetune.tasks.intent.learning_rate=5E-5"])
    assert (cfg.pretrain.learning_rate, cfg.finetune.tasks["intent"].learning_rate) == (3e-4, 5e-5)
    with pytest.raises(ConfigError, match="pretrain.batch_size: expected an integer, got '1e3'"):
        load_config(repo_root / "params.yaml", ["pretrain.batch_size=1e3"])  # an integer key stays strict


def test_bad_key_in_the_params_file_names_file_and_key(tmp_path, repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["pretrain"]["mlm_probabilty"] = 0.2  # a typo in the file itself
    params["pretrain"]["learning_rate"] = -0.002
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(repo_root / "presets", tmp_path / "presets")
    result = run_cli(["config"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("configuration error: params.yaml: unknown key(s) pretrain.mlm_probabilty")


# ------------------------------------------------------------------------------------ when a stage starts


@pytest.mark.parametrize("command, key", [("cmd_pretrain", "pretrain.loop.precision"),
                                          ("cmd_finetune", "finetune.loop.precision"),
                                          ("cmd_pretrain_ssl", "vision.pretrain.loop.precision")])
def test_bad_gpu_preset_on_a_cpu_only_machine(repo_root, command, key):
    params = repo_root / "params.yaml"
    with pytest.raises(ConfigError) as err:
        check_stage_start(command, params, ["preset=base"], "intent", cuda_available=lambda: False)
    assert str(err.value) == (f"{params}: {key}: bf16 autocast needs a CUDA GPU, and this machine has none (preset "
                              f"'base' is for GPU machines: select preset=cpu, or set {key}=fp32)")
    check_stage_start(command, params, ["preset=base"], "intent", cuda_available=lambda: True)  # fine on a GPU
    check_stage_start(command, params, ["preset=cpu"], "intent", cuda_available=lambda: False)


def test_bad_cuda_device_on_a_cpu_only_machine(repo_root):
    with pytest.raises(ConfigError, match=r"retrieval\.simcse\.loop\.device: 'cuda:0' needs a CUDA GPU, and this "
                                          r"machine has none \(set retrieval\.simcse\.loop\.device=auto or cpu\)"):
        check_stage_start("cmd_simcse", repo_root / "params.yaml", ["retrieval.simcse.loop.device=cuda:0"],
                          cuda_available=lambda: False)


def test_bad_preflight_table_matches_the_cli_and_the_config(repo_root):
    import selfsup.cli

    cfg = load_config(repo_root / "params.yaml")
    for command, loops in STAGE_LOOPS.items():
        assert callable(getattr(selfsup.cli, command)), command
        for path in loops:
            node = cfg
            for part in path.split("."):
                node = getattr(node, part)
            assert isinstance(node, TrainLoopConfig), path
    # commands that train nothing are not checked (and need no torch import)
    check_stage_start("cmd_validate", repo_root / "params.yaml", ["preset=base"], cuda_available=lambda: False)


@pytest.fixture
def project(tmp_path, repo_root) -> Path:
    """params.yaml, the presets and the fixture data (50 pool images, 48 intent training rows); nothing else."""
    shutil.copy(repo_root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(repo_root / "presets", tmp_path / "presets")
    shutil.copytree(FIXTURE_DATA, tmp_path / "data")
    return tmp_path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a CPU-only machine: this one has CUDA")
def test_bad_gpu_preset_cli_exits_2_before_any_work(project):
    before = _files(project)
    for command in (["pretrain"], ["finetune", "intent"], ["pretrain-ssl"]):
        result = run_cli([*command, "preset=base"], cwd=project)
        assert result.returncode == 2, result.stderr
        assert "bf16 autocast needs a CUDA GPU, and this machine has none (preset 'base' is for GPU machines" \
               in result.stderr
    assert _files(project) == before, "nothing written: no model, metrics, checkpoint or MLflow run"


def test_bad_batch_larger_than_the_data_is_rejected_when_the_stage_starts(project):
    before = _files(project)
    result = run_cli(["finetune", "intent", "finetune.tasks.intent.batch_size=49"], cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: params.yaml: finetune.tasks.intent.batch_size: must be <= the training examples, got 49 "
        "for 48 (data/intent/train.csv has 48 rows): a batch larger than the data")
    result = run_cli(["pretrain-ssl", "vision.pretrain.batch_size=64", "vision.pretrain.queue_size=4096"], cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: params.yaml: vision.pretrain.batch_size: must be <= the pretraining images, got 64 for "
        "50 (data/images/manifest.csv has 50 rows of split 'train'; vision.data.max_pretrain_images=0): a batch "
        "larger than the data")
    assert _files(project) == before
    # on the boundary the stages may start
    check_stage_start("cmd_finetune", project / "params.yaml", [f"data.tasks.intent.dir={project / 'data/intent'}",
                                                                "finetune.tasks.intent.batch_size=48"], "intent")
    check_stage_start("cmd_pretrain_ssl", project / "params.yaml",
                      [f"vision.data.manifest={project / 'data/images/manifest.csv'}", "vision.pretrain.batch_size=50",
                       "vision.pretrain.queue_size=4050"])
