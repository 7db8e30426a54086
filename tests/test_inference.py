"""Predictor against the model's direct output (.keras and run checkpoint), folder mode files,
the predict CLI and the pictures of gscnn_tf.viz."""

import copy
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf import viz
from gscnn_tf.config import save_config
from gscnn_tf.inference import Predictor


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
    """The session's trained tiny model saved three ways: .keras, a run directory checkpoint,
    and its config."""
    root = tmp_path_factory.mktemp("model")
    config, model, _ = tiny_run
    config = copy.deepcopy(config)
    config.train.run_dir = str(root / "run")
    model.save(str(root / "model.keras"))
    save_config(config, os.path.join(config.train.run_dir, "config.yaml"))
    tf.train.Checkpoint(model=model).save(os.path.join(config.train.run_dir, "checkpoints",
                                                       "ckpt"))
    return model, root, config


def direct(model, image):
    out = model(image[None].astype(np.float32), training=False)
    return (np.argmax(out["seg_logits"].numpy(), -1),
            tf.sigmoid(out["edge_logits"]).numpy()[..., 0])


@pytest.mark.parametrize("source", ["model.keras", "run", "run/checkpoints"])
def test_predictor_equals_model(trained, rng, source):
    model, root, _ = trained
    image = rng.integers(0, 256, (40, 56, 3)).astype(np.uint8)
    predictor = Predictor(str(root / source))
    out = predictor.predict(image)
    labels, edge = direct(model, image)
    np.testing.assert_array_equal(out["labels"], labels)
    np.testing.assert_allclose(out["edge_prob"], edge, atol=1e-5)
    assert out["labels"].shape == (1, 40, 56) and out["edge_prob"].shape == (1, 40, 56)


def test_predict_folder_writes_every_file(trained, rng, tmp_path):
    _, root, _ = trained
    inputs = tmp_path / "in"
    names = ["a.png", "sub/b.jpg", "sub/deeper/c.png"]
    for name in names:
        os.makedirs(os.path.dirname(inputs / name), exist_ok=True)
        cv2.imwrite(str(inputs / name), rng.integers(0, 256, (32, 48, 3)).astype(np.uint8))
    (inputs / "notes.txt").write_text("not an image")
    predictor = Predictor(str(root / "model.keras"))
    written = predictor.predict_folder(str(inputs), str(tmp_path / "out"), gates=True,
                                       progress=False)
    expected = {os.path.join(str(tmp_path / "out"), os.path.splitext(n)[0] + f"_{kind}.png")
                for n in names for kind in ("labels", "overlay", "edges", "gates")}
    assert set(written) == expected
    for path in expected:
        assert os.path.isfile(path)
    labels = cv2.imread(os.path.join(str(tmp_path / "out"), "a_labels.png"),
                        cv2.IMREAD_UNCHANGED)
    image = viz.read_rgb(str(inputs / "a.png"))
    np.testing.assert_array_equal(labels, predictor.predict(image)["labels"][0])
    gates = cv2.imread(os.path.join(str(tmp_path / "out"), "a_gates.png"))
    assert gates.shape == (32, 3 * 48 + 2 * 4, 3)


def test_predict_cli(trained, rng, tmp_path):
    from gscnn_tf.cli import main

    _, root, _ = trained
    cv2.imwrite(str(tmp_path / "x.png"), rng.integers(0, 256, (24, 24, 3)).astype(np.uint8))
    assert main(["predict", str(root / "run"), str(tmp_path / "x.png"), "-o",
                 str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["x_edges.png", "x_labels.png",
                                                     "x_overlay.png"]


def test_predictor_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a .keras file"):
        Predictor(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model file not found"):
        Predictor(str(tmp_path / "missing.keras"))


def test_viz_pictures():
    palette = viz.default_palette(5)
    assert len({tuple(c) for c in palette}) == 5
    assert tuple(viz.default_palette(19)[0]) == (128, 64, 128)
    labels = np.array([[0, 1], [4, 255]])
    colours = viz.colorize(labels, palette)
    np.testing.assert_array_equal(colours[0, 1], palette[1])
    np.testing.assert_array_equal(colours[1, 1], [0, 0, 0])
    image = np.full((2, 2, 3), 100, np.uint8)
    blended = viz.overlay(image, labels, palette, alpha=0.25)
    np.testing.assert_array_equal(blended[1, 0], np.round(0.75 * 100 + 0.25 * palette[4]))
    prob = viz.probability_picture(np.array([[0.0, 0.5], [1.0, 2.0]]))
    np.testing.assert_array_equal(prob[..., 0], [[0, 128], [255, 255]])
    gates = viz.gates_picture({"gate1": np.ones((2, 2)), "gate2": np.zeros((2, 2, 1))},
                              (4, 6), gap=2)
    assert gates.shape == (4, 14, 3) and gates[0, 0, 0] == 255 and gates[0, 8, 0] == 0


def test_predictor_savedmodel(trained, rng, tmp_path):
    """A SavedModel with the serving contract (uint8 images -> labels, edge_prob)."""
    model, _, _ = trained

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                    name="images")])
        def serve(self, images):
            out = self.model(tf.cast(images, tf.float32), training=False)
            return {"labels": tf.argmax(out["seg_logits"], -1, output_type=tf.int32),
                    "edge_prob": tf.sigmoid(out["edge_logits"])}

    module = Serving()
    tf.saved_model.save(module, str(tmp_path / "sm"),
                        signatures={"serving_default": module.serve})
    image = rng.integers(0, 256, (24, 40, 3)).astype(np.uint8)
    predictor = Predictor(str(tmp_path / "sm"))
    out = predictor.predict(image)
    labels, edge = direct(model, image)
    np.testing.assert_array_equal(out["labels"], labels)
    np.testing.assert_allclose(out["edge_prob"], edge, atol=1e-5)
    with pytest.raises(ValueError, match="gates"):
        predictor.predict(image, gates=True)
    with pytest.raises(ValueError, match="labels only"):
        predictor.probabilities(image[None])


def test_predictor_from_model(trained, rng):
    model, _, config = trained
    image = rng.integers(0, 256, (16, 24, 3)).astype(np.uint8)
    out = Predictor.from_model(model, config).predict(image)
    np.testing.assert_array_equal(out["labels"], direct(model, image)[0])
