import shutil
from pathlib import Path

import pytest
import yaml

from selfsup.config import (Config, ConfigError, TableRules, config_from_dict, config_to_dict, describe_keys,
                            load_config, option)

from conftest import run_cli


def test_repo_params_load_with_declared_tasks(repo_root):
    cfg = load_config(repo_root / "params.yaml")
    assert isinstance(cfg, Config)
    assert set(cfg.data.tasks) == {"intent", "sentiment", "topic"}
    assert cfg.data.tasks["sentiment"].labels == ["negative", "neutral", "positive"]
    assert cfg.data.tasks["intent"].dir == Path("data/intent")
    assert cfg.validate.tables["topic"].min_per_class == 30


def test_override_sets_nested_value_and_parses_yaml(repo_root):
    cfg = load_config(repo_root / "params.yaml", ["validate.corpus.min_chars=7", "data.splits=[train, test]"])
    assert cfg.validate.corpus.min_chars == 7
    assert cfg.data.splits == ["train", "test"]


def test_defaults_fill_missing_sections():
    cfg = config_from_dict({"data": {"tasks": {"t": {"dir": "d", "labels": ["a", "b"]}}}})
    assert cfg.validate.corpus == TableRules()
    assert cfg.validate.report_dir == Path("artifacts/validation")


@pytest.mark.parametrize(
    "override, message",
    [
        ("validate.corpus.min_chars=abc", "validate.corpus.min_chars: expected an integer, got 'abc'"),
        ("validate.corpus.min_chars=0", "validate.corpus.min_chars: must be >= 1"),
        ("validate.corpus.max_duplicate_rate=1.5", "validate.corpus.max_duplicate_rate: must be in [0, 1)"),
        ("validate.tables.intent.min_per_clas=3", "unknown key(s) validate.tables.intent.min_per_clas"),
        ("data.tasks.intent.labels=[a]", "data.tasks.intent.labels: needs at least 2 items, got ['a']"),
        ("data.tasks.intent.labels=[a, a]", "data.tasks.intent.labels: has duplicates: ['a', 'a']"),
        ("validate.tables.nosuch.min_chars=3", "validate.tables: rules for undeclared tasks ['nosuch']"),
        ("nonsense=1", "unknown key(s) nonsense"),
        ("validate.max_failures_shown=true", "validate.max_failures_shown: expected an integer, got True"),
        ("noequals", "expected key.path=value"),
        # rules declared on the fields (option(ge=..., choices=...)), checked by the loader
        ("pretrain.model.dropout=1.0", "pretrain.model.dropout: must be in [0, 1), got 1.0"),
        ("export.min_label_agreement=0", "export.min_label_agreement: must be in (0, 1], got 0.0"),
        ("pretrain.validation_fraction=0.5", "pretrain.validation_fraction: must be in (0, 0.5), got 0.5"),
        ("pretrain.mlm_probability=.nan", "pretrain.mlm_probability: must be in (0, 1), got nan"),
        ("gate.tasks.intent={min_pretraining_gain: -1.5}", "gate.tasks.intent.min_pretraining_gain: must be in [-1, 1]"),
        ("pretrain.source_weights={tweets: -1}", "pretrain.source_weights.tweets: must be >= 0, got -1.0"),
        ("vision.evaluate.label_fractions=[0, 1.0]", "vision.evaluate.label_fractions[0]: must be in (0, 1], got 0.0"),
        ("vision.evaluate.label_fractions=[]", "vision.evaluate.label_fractions: must not be empty"),
        ("data.splits=[train, validation]", "data.splits: must include 'test'"),
        ("vision.pretrain.augment.crop_scale=[0.5]", "vision.pretrain.augment.crop_scale: needs exactly 2 items"),
        ("vision.pretrain.batch_size=1", "vision.pretrain.batch_size: must be >= 2, got 1"),
        ("orchestration.server_port=65536", "orchestration.server_port: must be in [1, 65535], got 65536"),
        ("pretrain.loop.device=gpu", "pretrain.loop.device: must match 'auto|cpu|cuda.*', got 'gpu'"),
        ("orchestration.training_cron='0 2 * *'", "orchestration.training_cron: must match"),
        # cross-field rules stay in the sections' check()
        ("pretrain.warmup_steps=100000", "pretrain.warmup_steps: must be < max_steps ("),
        ("validate.corpus.max_chars=0", "validate.corpus.max_chars: must be >= min_chars"),
        ("pretrain.model={hidden_size: 256, num_heads: 3}", "pretrain.model.num_heads: must divide hidden_size (256), got 3"),
    ],
)
def test_bad_values_are_rejected_with_key_path_and_rule(repo_root, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "params.yaml", [override])
    assert message in str(err.value)
    assert "params.yaml" in str(err.value)


def test_unknown_key_in_file_is_rejected(tmp_path, repo_root):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["validate"]["corpus"]["max_char"] = 10
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    shutil.copytree(repo_root / "presets", tmp_path / "presets")  # params.yaml names a preset
    with pytest.raises(ConfigError, match=r"unknown key\(s\) validate.corpus.max_char"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such parameters file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_dict(repo_root):
    cfg = load_config(repo_root / "params.yaml")
    again = config_from_dict(config_to_dict(cfg), presets_dir=repo_root / "presets")
    assert again == cfg


def test_every_key_is_documented():
    rows = describe_keys()
    keys = {key for key, _, _ in rows}
    assert {"data.corpus", "validate.corpus.min_chars", "validate.tables.<name>.min_per_class"} <= keys
    assert all(help_text for _, _, help_text in rows)


def test_cli_reports_config_errors_with_exit_2(repo_root):
    result = run_cli(["config", "validate.corpus.min_chars=x"], cwd=repo_root)
    assert result.returncode == 2
    assert "validate.corpus.min_chars: expected an integer" in result.stderr
    ok = run_cli(["config", "validate.corpus.min_chars=9"], cwd=repo_root)
    assert ok.returncode == 0
    assert yaml.safe_load(ok.stdout)["validate"]["corpus"]["min_chars"] == 9


# ------------------------------------------------------------------------------------ declarative field rules


def test_override_breaking_a_rule_names_the_file_key_and_rule(repo_root):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "params.yaml", ["pretrain.batch_size=0"])
    assert str(err.value) == f"{repo_root / 'params.yaml'}: pretrain.batch_size: must be >= 1, got 0"


def test_choices_violation_lists_the_choices(repo_root):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "params.yaml", ["finetune.loop.precision=fp16"])
    assert str(err.value).endswith("params.yaml: finetune.loop.precision: must be one of ['fp32', 'bf16'], got 'fp16'")


@pytest.mark.parametrize("override", [
    "pretrain.model.dropout=0", "export.min_label_agreement=1", "pretrain.loop.threads=0", "gate.tasks.intent={}",
    "gate.tasks.intent={min_pretraining_gain: -1}", "pretrain.loop.device=cuda:1", "vision.pretrain.batch_size=2",
    "vision.pretrain.augment.crop_scale=[1.0, 1.0]", "orchestration.training_cron=' 0 2\t* * * '",
    "orchestration.server_port=65535", "pretrain.source_weights={tweets: 0}",
])
def test_values_on_a_rule_boundary_are_accepted(repo_root, override):
    load_config(repo_root / "params.yaml", [override])


def test_rules_hold_for_defaults_too():
    with pytest.raises(ConfigError, match=r"^data.tasks: must not be empty$"):
        config_from_dict({"data": {}})


def test_a_field_takes_one_bound_per_side():
    with pytest.raises(TypeError, match="one lower bound"):
        option(0, help="x", ge=0, gt=0)


def test_describe_keys_shows_each_keys_rules():
    helps = {key: help_text for key, _, help_text in describe_keys()}
    assert helps["pretrain.batch_size"] == "sequences per optimizer step [>= 1]"
    assert helps["pretrain.loop.precision"].endswith(" [one of: fp32, bf16]")
    assert helps["pretrain.model.dropout"].endswith(" [0 <= x < 1]")
    assert helps["vision.evaluate.label_fractions"].endswith(" [non-empty, includes 1.0, items 0 < x <= 1]")
    assert helps["pretrain.source_weights"].endswith(" [values >= 0]")
    assert helps["data.tasks.<name>.labels"].endswith(" [at least 2 items, distinct items]")
    assert "[" not in helps["pretrain.weight_decay"]  # no rule, nothing shown
