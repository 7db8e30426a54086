"""Saved GSCNN models as a user meets them: `.keras` files and presets load in a fresh process
after `import gscnn_tf` alone, with the same outputs; a training run leaves its best model as
both; `gscnn-tf predict` / `export` take a `.keras` file with no config near it."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import gscnn_tf
from gscnn_tf import viz
from gscnn_tf.cli import main
from gscnn_tf.models import presets
from gscnn_tf.training.trainer import Trainer
from training_support import tiny_config
from conftest import tiny_model_kwargs, tiny_model_overrides

TINY = tiny_model_kwargs(dropout=False)
TINY_OVERRIDES = tiny_model_overrides("model.backbone.dropout=false")
CLASSES = ["road", "tree", "sky"]
PALETTE = [[128, 64, 128], [107, 142, 35], [70, 130, 180]]

# Run in a new interpreter: loads each source given on the command line with nothing but
# `import gscnn_tf` (and keras, numpy), and writes its logits and description to an .npz.
_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    import gscnn_tf
    images = np.load(sys.argv[1])
    results = {}
    for i, source in enumerate(sys.argv[3:]):
        if source.endswith(".keras"):
            model = keras.saving.load_model(source)
        else:
            model = gscnn_tf.GSCNN.from_preset(source)
        assert type(model) is gscnn_tf.GSCNN, type(model)
        out = model(images, training=False)
        results[f"seg{i}"] = out["seg_logits"].numpy()
        results[f"edge{i}"] = out["edge_logits"].numpy()
        results[f"names{i}"] = np.array(model.class_names)
        results[f"palette{i}"] = np.array(model.palette)
    registered = sorted(k for k in keras.saving.get_custom_objects() if k.startswith("gscnn_tf>"))
    np.savez(sys.argv[2], registered=np.array(registered), **results)
""")


def _child(tmp_path, images, *sources) -> dict:
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "images.npy"),
                             str(tmp_path / "out.npz"), *map(str, sources)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(tmp_path / "out.npz"))


def test_keras_files_and_presets_round_trip_in_a_fresh_process(tmp_path, rng):
    images = rng.uniform(0, 255, (2, 40, 36, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)
    gscnn = gscnn_tf.GSCNN(3, **TINY, class_names=CLASSES, palette=PALETTE)
    baseline = gscnn_tf.GSCNN(3, **TINY, shape_stream=False, ignore_label=0)
    for model in (gscnn, baseline):   # BN statistics away from their initial values
        model(images, training=True)
    gscnn.save(tmp_path / "gscnn.keras")
    baseline.save(tmp_path / "baseline.keras")
    gscnn.save_to_preset(tmp_path / "preset")
    got = _child(tmp_path, images, tmp_path / "gscnn.keras", tmp_path / "baseline.keras",
                 tmp_path / "preset")
    for i, model in enumerate((gscnn, baseline, gscnn)):
        out = model(images, training=False)
        np.testing.assert_allclose(got[f"seg{i}"], out["seg_logits"].numpy(), atol=1e-6)
        np.testing.assert_allclose(got[f"edge{i}"], out["edge_logits"].numpy(), atol=1e-6)
    assert list(got["names0"]) == list(got["names2"]) == CLASSES
    assert got["palette2"].tolist() == PALETTE
    assert list(got["names1"]) == ["class_0", "class_1", "class_2"]
    assert np.all(got["edge1"] == 0)              # the baseline's stand-in edge map
    assert baseline.get_config()["ignore_label"] == 0
    # `import gscnn_tf` alone registered every Keras class the package defines.
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(gscnn_tf.__path__, "gscnn_tf."):
        importlib.import_module(module.name)
    everything = sorted(k for k in keras.saving.get_custom_objects() if k.startswith("gscnn_tf>"))
    assert "gscnn_tf>GSCNN" in everything and "gscnn_tf>Canny" in everything
    assert list(got["registered"]) == everything


def test_get_config_is_the_constructor_arguments():
    model = gscnn_tf.GSCNN(3, **TINY, class_names=CLASSES, palette=PALETTE, gate="paper",
                           loss_config={"lambda_edge": 5.0})
    config = model.get_config()
    rebuilt = gscnn_tf.GSCNN(**config)
    assert rebuilt.get_config() == config
    assert config["backbone"]["base_width"] == 8 and config["gate"] == "paper"
    assert config["loss_config"]["lambda_edge"] == 5.0 and config["num_classes"] == 3
    assert [w.path for w in rebuilt.weights] == [w.path for w in model.weights]
    with pytest.raises(ValueError, match="class_names has 2 names"):
        gscnn_tf.GSCNN(3, **TINY, class_names=["a", "b"])
    with pytest.raises(gscnn_tf.ConfigError, match="'model.shape_stream_stride': expected int"):
        gscnn_tf.GSCNN(3, **TINY, shape_stream_stride="two")
    with pytest.raises(TypeError, match="unknown argument.*gates"):
        gscnn_tf.GSCNN(3, **TINY, gates="paper")


def test_from_yaml_takes_classes_from_the_dataset(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("model:\n  backbone: {base_width: 8}\n  aspp_channels: 16\n"
                    "  decoder_channels: 16\n  skip_channels: 8\n  shape_stream: false\n"
                    "loss:\n  lambda_edge: 3.0\n")
    model = gscnn_tf.GSCNN.from_yaml(path, ["data.ignore_label=250"])
    from gscnn_tf.data.synthetic import CLASSES as SYNTHETIC

    assert model.num_classes == len(SYNTHETIC) and model.name == "deeplabv3plus_small"
    assert list(model.class_names) == [name for name, _ in SYNTHETIC]
    assert model.ignore_label == 250 and model.loss_config.lambda_edge == 3.0
    assert isinstance(gscnn_tf.build_model(model.model_config, 4), gscnn_tf.GSCNN)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step training run of the tiny GSCNN, validated at its end."""
    config = tiny_config(str(tmp_path_factory.mktemp("synthetic")),
                         str(tmp_path_factory.mktemp("run") / "run"), "train.steps=2",
                         *TINY_OVERRIDES)
    keras.utils.set_random_seed(0)
    trainer = Trainer(config)
    trainer.train()
    return trainer


def test_training_writes_its_best_model_as_keras_file_and_preset(run, rng):
    run_dir = run.config.train.run_dir
    best = os.path.join(run_dir, "best")
    assert os.path.isfile(os.path.join(best, "model.keras"))
    assert presets.is_preset(os.path.join(best, "preset"))
    images = rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    expected = run.model(images, training=False)["seg_logits"].numpy()
    loaded = gscnn_tf.GSCNN.from_preset(run_dir)             # the run directory itself
    np.testing.assert_allclose(loaded(images)["seg_logits"].numpy(), expected, atol=1e-6)
    assert list(loaded.class_names) == list(run.info.class_names)
    metadata = presets.read_metadata(os.path.join(best, "preset"))
    assert metadata["metrics"]["step"] == 2
    assert metadata["metrics"]["miou"] == pytest.approx(run.history[-1]["val"]["miou"])
    assert loaded.training_config.train.steps == 2 and loaded.training_config.data.crop_size \
        == [32, 32]
    assert os.path.isfile(os.path.join(best, "preset", "config.yaml"))
    card = open(os.path.join(best, "preset", "README.md"), encoding="utf-8").read()
    assert "## Metrics" in card and f"{100 * metadata['metrics']['miou']:.2f} %" in card
    assert "gscnn_tf.GSCNN.from_preset(" in card and "| 0 | " in card


def test_a_run_without_saved_model_loads_from_config_and_checkpoint(run, rng, tmp_path):
    import shutil

    copy = str(tmp_path / "old_run")
    shutil.copytree(run.config.train.run_dir, copy)
    shutil.rmtree(os.path.join(copy, "best", "preset"))
    os.remove(os.path.join(copy, "best", "model.keras"))
    images = rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    loaded = gscnn_tf.GSCNN.from_preset(copy)
    np.testing.assert_allclose(loaded(images)["seg_logits"].numpy(),
                               run.model(images, training=False)["seg_logits"].numpy(),
                               atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a preset folder"):
        gscnn_tf.GSCNN.from_preset(str(tmp_path / "nothing"))


def test_presets_replace_atomically_and_keep_metrics(tmp_path):
    model = gscnn_tf.GSCNN(3, **TINY)
    model.compile(steps=2)                               # its optimizer stays out
    target = tmp_path / "p"
    model.save_to_preset(target, metrics={"miou": 0.5})
    import h5py

    with h5py.File(target / "model.weights.h5", "r") as f:
        assert sorted(f) == ["layers", "vars"]
    model.save_to_preset(target, metrics={"miou": 0.25})
    assert sorted(os.listdir(tmp_path)) == ["p"]         # no staging folder left behind
    assert sorted(os.listdir(target)) == ["README.md", "config.json", "metadata.json",
                                          "model.weights.h5"]
    loaded = gscnn_tf.GSCNN.from_preset(target)
    assert loaded.training_metrics == {"miou": 0.25}
    loaded.save_to_preset(tmp_path / "again")            # metrics travel with the model
    assert presets.read_metadata(tmp_path / "again")["metrics"] == {"miou": 0.25}
    with open(target / "config.json", encoding="utf-8") as f:
        assert json.load(f)["registered_name"] == "gscnn_tf>GSCNN"


def test_predict_and_export_take_a_keras_file_alone(tmp_path, rng):
    """In an empty folder holding only the model and an image, as a user who was sent them."""
    folder = tmp_path / "empty"
    folder.mkdir()
    gscnn_tf.GSCNN(3, **TINY, class_names=CLASSES, palette=PALETTE).save(folder / "m.keras")
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    viz.write_png(str(folder / "street.png"), image)
    command = (f"{sys.executable} -m gscnn_tf.cli predict m.keras street.png -o out && "
               f"{sys.executable} -m gscnn_tf.cli export m.keras --format saved_model "
               "--output exports")
    result = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(folder / "out")) == ["street_edges.png", "street_labels.png",
                                                  "street_overlay.png"]
    with open(folder / "exports" / "gscnn" / "1" / "assets" / "classes.json",
              encoding="utf-8") as f:
        classes = json.load(f)
    assert classes["class_names"] == CLASSES and classes["palette"] == PALETTE
    overlay = viz.read_rgb(str(folder / "out" / "street_overlay.png"))
    labels = viz.read_rgb(str(folder / "out" / "street_labels.png"))[..., 0]
    expected = viz.overlay(image, labels, np.array(PALETTE, np.uint8), 0.5)
    np.testing.assert_array_equal(overlay, expected)      # the model's own palette


def test_cli_commands_take_a_preset(run, tmp_path, capsys):
    preset = os.path.join(run.config.train.run_dir, "best", "preset")
    image = str(tmp_path / "street.png")
    viz.write_png(image, np.zeros((32, 32, 3), np.uint8))
    assert main(["predict", preset, image, "-o", str(tmp_path / "out")]) == 0
    assert main(["summary", preset, "--size", "32x32"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 files" in printed and f"{len(run.info.class_names)} classes" in printed
    # A preset alone, away from its run: its config.yaml names the data to evaluate on.
    import shutil

    alone = str(tmp_path / "alone")
    shutil.copytree(preset, alone)
    assert main(["evaluate", alone, "--limit", "2", "-o", str(tmp_path / "eval")]) == 0
    assert "2 images: mIoU" in capsys.readouterr().out
    three = str(tmp_path / "three.keras")
    gscnn_tf.GSCNN(3, **TINY, shape_stream=False).save(three)
    assert main(["summary", three, "--size", "32x32"]) == 0
    assert "model deeplabv3plus_small, 3 classes" in capsys.readouterr().out
