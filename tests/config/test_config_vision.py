import pytest

from selfsup.config import ConfigError, load_config


def test_every_method_is_one_override_away(repo_root):
    for method in ("simclr", "moco", "byol", "simsiam", "dino"):
        assert load_config(repo_root / "params.yaml", [f"vision.pretrain.method={method}"]).vision.pretrain.method == method


@pytest.mark.parametrize("override,message", [
    ("vision.pretrain.method=swav", "vision.pretrain.method: must be one of"),
    ("vision.pretrain.queue_size=1000", "vision.pretrain.queue_size: must be a multiple of batch_size"),
    ("vision.pretrain.augment.crop_scale=[0.5, 0.2]", "vision.pretrain.augment.crop_scale"),
    ("vision.evaluate.label_fractions=[0.1]", "must include 1.0"),
    ("vision.data.eval_split=train", "vision.data.eval_split: must differ"),
    ("vision.pretrain.widht=3", "unknown key(s) vision.pretrain.widht"),
    ("gate.image.metric=macro_f1", "gate.image.metric: must be one of ['knn_accuracy', 'probe_accuracy']"),
    ("gate.image.min_knn_accuracy=75", "gate.image.min_knn_accuracy: must be in [0, 1]"),
    ("data.tasks.image-encoder={dir: data/x, labels: [a, b]}", "data.tasks.image-encoder: this task name is reserved"),
])
def test_bad_vision_values_name_their_key(repo_root, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[")):
        load_config(repo_root / "params.yaml", [override])


def test_presets_cover_the_image_stages(repo_root):
    gpu = load_config(repo_root / "params.yaml", ["preset=base"]).vision.pretrain
    assert (gpu.backbone, gpu.loop.precision, gpu.channels_last) == ("resnet18", "bf16", True)
    assert load_config(repo_root / "params.yaml", ["preset=tiny"]).vision.pretrain.max_steps <= 5
