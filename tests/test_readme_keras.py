"""The README's Keras example (section "Training with Keras `fit`") runs as written, in a
fresh process, on a tiny config standing in for configs/synthetic.yaml: compile(), fit,
evaluate-style metrics, save_to_preset and from_preset."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Training with Keras `fit`"


def keras_example() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(SECTION):]
    return re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)


def test_the_example_is_short_and_covers_the_task():
    example = keras_example()
    lines = [line for line in example.splitlines() if line.strip()]
    assert len(lines) <= 20, len(lines)
    for call in ("import gscnn_tf", "model.compile()", "model.fit(", "model.evaluate(",
                 "save_to_preset(", "GSCNN.from_preset("):
        assert call in example, call


def test_the_readme_keras_example_runs_as_written(tmp_path):
    os.makedirs(tmp_path / "configs")
    (tmp_path / "configs" / "synthetic.yaml").write_text(
        "model: {backbone: {base_width: 8}, aspp_channels: 16, decoder_channels: 16, "
        "skip_channels: 8}\n"
        f"data: {{root: {tmp_path / 'data'}, crop_size: [32, 32], "
        "synthetic: {num_train: 8, num_val: 4, height: 32, width: 32}}\n"
        "train: {batch_size: 4}\n")
    result = subprocess.run([sys.executable, "-c", keras_example()], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"validation mIoU \d+\.\d %", result.stdout), result.stdout[-2000:]
    preset = tmp_path / "gscnn_synthetic"
    assert sorted(os.listdir(preset)) == ["README.md", "config.json", "metadata.json",
                                          "model.weights.h5"]
    with open(preset / "metadata.json", encoding="utf-8") as f:
        metrics = json.load(f)["metrics"]
    assert set(metrics) >= {"loss", "seg", "edge", "att", "dual", "l2", "miou"}
    assert os.path.isfile(tmp_path / "gscnn_synthetic.keras")
