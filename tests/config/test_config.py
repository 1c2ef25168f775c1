from pathlib import Path

import pytest
import yaml

from selfsup.config import Config, ConfigError, TableRules, config_from_dict, config_to_dict, describe_keys, load_config

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
        ("data.tasks.intent.labels=[a]", "data.tasks.intent.labels: needs at least 2 labels"),
        ("data.tasks.intent.labels=[a, a]", "data.tasks.intent.labels: has duplicates"),
        ("validate.tables.nosuch.min_chars=3", "validate.tables: rules for undeclared tasks ['nosuch']"),
        ("nonsense=1", "unknown key(s) nonsense"),
        ("validate.max_failures_shown=true", "validate.max_failures_shown: expected an integer, got True"),
        ("noequals", "expected key.path=value"),
    ],
)
def test_bad_values_are_rejected_with_key_path(repo_root, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(repo_root / "params.yaml", [override])
    assert message in str(err.value)
    assert "params.yaml" in str(err.value)


def test_unknown_key_in_file_is_rejected(tmp_path, repo_root):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["validate"]["corpus"]["max_char"] = 10
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
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
