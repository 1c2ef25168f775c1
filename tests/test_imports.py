import subprocess
import sys


def test_core_imports_no_launcher_libraries():
    """The core must run where prefect/mlflow/GE/dvc are absent (e.g. the GPU image): importing it pulls none."""
    code = (
        "import sys, selfsup, selfsup.config, selfsup.data.clean, selfsup.data.build, selfsup.data.sources, "
        "selfsup.data.suites, selfsup.data.validation, selfsup.data.text, selfsup.modeling.tokenizer, "
        "selfsup.modeling.encoder, selfsup.recipes.pretrain_mlm, selfsup.recipes.finetune, selfsup.evaluate, "
        "selfsup.export, selfsup.tracking, selfsup.runtime, selfsup.serve.predict, selfsup.cli, "
        "selfsup.losses, selfsup.modeling.vision, selfsup.data.images, selfsup.data.augment, "
        "selfsup.data.image_validation, selfsup.recipes.image_common, selfsup.recipes.contrastive, "
        "selfsup.recipes.self_distillation, selfsup.evaluate_image, selfsup.vision_stages, "
        "selfsup.gate, selfsup.registry, selfsup.monitoring\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'prefect', 'mlflow', 'great_expectations', 'dvc', 'pandas'})\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
