"""Evaluator: sliding window, flip and multi-scale averaging against hand-derived answers; a
tiny fake Cityscapes set scored by us and by cityscapesscripts' official evaluator; the
evaluate CLI's report files."""

import json
import os

import cv2
import numpy as np
import pytest

import gscnn_tf
from gscnn_tf.config import Config
from gscnn_tf.data.cityscapes import CLASSES
from gscnn_tf.evaluation import evaluator as ev
from gscnn_tf.evaluation.report import crop_factor_plot
from conftest import tiny_model_config


def test_window_starts_cover_the_image():
    assert ev.window_starts(10, 20, 0.3) == [0]
    starts = ev.window_starts(100, 30, 0.33)
    assert starts[0] == 0 and starts[-1] == 70
    assert all(b - a <= 30 * (1 - 0.33) + 1 for a, b in zip(starts, starts[1:]))


def test_sliding_window_stitches_exactly(rng):
    image = rng.uniform(0, 255, (37, 53, 3)).astype(np.float32)
    pointwise = lambda x: np.concatenate([x * 2, x[..., :1] ** 2], -1)  # noqa: E731
    full = pointwise(image[None])[0]
    np.testing.assert_allclose(ev.sliding_window(pointwise, image, (16, 20), 0.5), full,
                               rtol=1e-6)
    calls = []
    counted = lambda x: calls.append(x.shape) or pointwise(x)  # noqa: E731
    np.testing.assert_array_equal(ev.sliding_window(counted, image, (64, 64), 0.5), full)
    assert calls == [(1, 37, 53, 3)]


def test_sliding_window_equals_full_image_with_model(rng):
    config = Config()
    config.model = tiny_model_config()
    model = gscnn_tf.build_model(config.model, 4)
    forward = lambda x: model(x.astype(np.float32), training=False)["seg_logits"].numpy()  # noqa
    image = rng.uniform(0, 255, (48, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(ev.sliding_window(forward, image, (48, 64), 0.33),
                               forward(image[None])[0], atol=1e-5)


def test_flip_averaging():
    image = np.zeros((6, 9, 3), np.float32)
    column = lambda x: np.broadcast_to(  # noqa: E731
        np.arange(x.shape[2], dtype=np.float32)[None, None, :, None], x.shape[:3] + (1,))
    out = ev.augmented_probabilities(column, image, flip=True)
    np.testing.assert_allclose(out, 4.0)  # (j + (8 - j)) / 2
    np.testing.assert_allclose(ev.augmented_probabilities(column, image)[0, :, 0], range(9))


def test_multi_scale_averaging(rng):
    image = cv2.GaussianBlur(rng.uniform(0, 255, (32, 48, 3)).astype(np.float32), (0, 0), 3)
    first = lambda x: x[..., :1]  # noqa: E731
    out = ev.augmented_probabilities(first, image, scales=(1.0, 2.0))
    up = cv2.resize(image, (96, 64), interpolation=cv2.INTER_LINEAR)[..., 0]
    back = cv2.resize(up, (48, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out[..., 0], (image[..., 0] + back) / 2, atol=1e-4)
    sizes = []
    ev.augmented_probabilities(lambda x: sizes.append(x.shape) or first(x), image,
                               scales=(0.5, 1.5), flip=True)
    assert sizes == [(1, 16, 24, 3)] * 2 + [(1, 48, 72, 3)] * 2


def fake_cityscapes(root, rng, n=3, size=(32, 64)):
    """Images whose red channel is 10 x the train id (250 on unlabeled pixels), so that
    `RedChannelPredictor` can predict them, mostly right."""
    ids = [0, 7, 8, 11, 21, 23, 24, 26]  # unlabeled (ignored) plus 7 evaluated classes
    train_id = {label_id: i for i, (_, label_id, _) in enumerate(CLASSES)}
    for i in range(n):
        stem = f"frankfurt_000000_{i:06d}"
        img_dir = os.path.join(root, "leftImg8bit", "val", "frankfurt")
        gt_dir = os.path.join(root, "gtFine", "val", "frankfurt")
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(gt_dir, exist_ok=True)
        coarse = rng.choice(ids, (size[0] // 8, size[1] // 8)).astype(np.uint8)
        label_ids = np.kron(coarse, np.ones((8, 8), np.uint8))
        image = rng.integers(0, 256, size + (3,)).astype(np.uint8)
        image[..., 0] = np.vectorize(lambda v: 10 * train_id.get(v, 25))(label_ids)
        cv2.imwrite(os.path.join(img_dir, stem + "_leftImg8bit.png"), image[..., ::-1])
        cv2.imwrite(os.path.join(gt_dir, stem + "_gtFine_labelIds.png"), label_ids)


class RedChannelPredictor:
    """Stands in for `Predictor`: train id = red / 10, wrong on every 5th column and row."""

    def predict(self, image):
        labels = np.clip(np.round(image[..., 0] / 10), 0, 18).astype(np.int32)
        labels[:, ::5] = (labels[:, ::5] + 1) % 19
        labels[::5] = 13
        return {"labels": labels[None]}


@pytest.fixture(scope="module")
def cityscapes_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs")
    fake_cityscapes(str(root / "data"), np.random.default_rng(1))
    config = Config()
    config.data.dataset, config.data.root = "cityscapes", str(root / "data")
    config.model = tiny_model_config()
    config.eval.reference_height = 64  # crop factors 4 / 8 remove 2 / 4 px of 32 rows
    config.eval.crop_factors = [0, 4, 8]
    model = gscnn_tf.build_model(config.model, len(CLASSES))
    layer = model.get_layer("decoder_classifier")
    layer.set_weights([np.random.default_rng(2).normal(0, 1, w.shape)
                       for w in layer.get_weights()])  # varied classes
    model.save(str(root / "model.keras"))
    return root, config


def test_official_cityscapes_evaluator_agrees(cityscapes_model, tmp_path):
    root, config = cityscapes_model
    evaluator = ev.Evaluator(RedChannelPredictor(), config)
    results = evaluator.run("val", str(tmp_path / "preds"), "cityscapes", progress=False)
    assert results["images"] == 3 and 0.3 < results["miou"] < 0.9
    np.in1d = np.isin  # cityscapesscripts still calls np.in1d (removed from NumPy 2.4)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    args.predictionPath, args.predictionWalk = str(tmp_path / "preds"), None
    gts = sorted(str(p) for p in (root / "data" / "gtFine" / "val").rglob("*_labelIds.png"))
    preds = [official.getPrediction(args, gt) for gt in gts]
    assert all(p.startswith(str(tmp_path / "preds")) for p in preds)
    scores = official.evaluateImgLists(preds, gts, args)
    assert results["miou"] == pytest.approx(scores["averageScoreClasses"], abs=1e-9)
    for name, iou in results["iou"].items():
        official_iou = scores["classScores"][name]
        assert (np.isnan(iou) and np.isnan(official_iou)) or iou == pytest.approx(official_iou)


def test_evaluate_cli_writes_reports(cityscapes_model, tmp_path):
    from gscnn_tf.cli import main

    root, config = cityscapes_model
    config_path = tmp_path / "config.yaml"
    gscnn_tf.save_config(config, str(config_path))
    out = tmp_path / "report"
    assert main(["evaluate", str(root / "model.keras"), "--config", str(config_path), "-o",
                 str(out), "--flip", "--window", "32", "48", "--limit", "2",
                 "--set", "eval.tolerances=[3,5]"]) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["images"] == 2 and results["settings"]["flip"] is True
    assert set(results["boundary_f"]) == {"3", "5"}
    assert set(results["crop_factor_miou"]) == {"0", "4", "8"}
    assert "| **mean** |" in (out / "metrics.md").read_text()
    assert cv2.imread(str(out / "crop_factor.png")).shape == (400, 640, 3)
    assert os.listdir(out / "events")


def test_crop_factor_plot_draws_points():
    picture = crop_factor_plot({0: 0.8, 100: 0.75, 200: 0.7})
    assert picture.shape == (400, 640, 3) and picture.dtype == np.uint8
    assert (picture != 255).any()


def test_evaluator_rejects_bad_window():
    config = Config()
    config.eval.window = [64]
    with pytest.raises(ValueError, match="eval.window"):
        ev.Evaluator(RedChannelPredictor(), config)


def test_sliding_window_exact_away_from_seams(rng):
    """A model that sees 3 px around each pixel (three 3x3 convolutions): windows overlapping
    by more than 2 x 3 px give the full-image result wherever every window holding the pixel
    has it at least 3 px inside its cut borders (near seams the windows' zero padding shows).
    GSCNN itself sees the whole window (ASPP image pooling), so its windowed result is not
    exact anywhere; only the whole-image window is (test above)."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = inputs
    for i in range(3):
        x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name=f"c{i}")(x)
    model = keras.Model(inputs, x)
    forward = lambda x: model(x.astype(np.float32) / 255, training=False).numpy()  # noqa
    image = rng.uniform(0, 255, (40, 70, 3)).astype(np.float32)
    full = forward(image[None])[0]
    window, overlap, radius = (24, 32), 0.5, 3
    out = ev.sliding_window(forward, image, window, overlap)
    exact = np.ones(image.shape[:2], bool)
    for top in ev.window_starts(40, 24, overlap):
        for left in ev.window_starts(70, 32, overlap):
            inner = np.zeros_like(exact)
            inner[top + (radius if top else 0): top + 24 - (radius if top + 24 < 40 else 0),
                  left + (radius if left else 0): left + 32 - (radius if left + 32 < 70 else 0)
                  ] = True
            covered = np.zeros_like(exact)
            covered[top:top + 24, left:left + 32] = True
            exact &= ~covered | inner
    assert exact.mean() > 0.3
    np.testing.assert_allclose(out[exact], full[exact], atol=1e-5)
    assert np.abs(out - full)[~exact].max() > 1e-3  # seams do differ: zero padding


def test_boundary_workers_give_the_same_results(cityscapes_model):
    _, config = cityscapes_model
    inline = ev.Evaluator(RedChannelPredictor(), config).run("val", progress=False)
    pooled = ev.Evaluator(RedChannelPredictor(), config, workers=2)
    pooled._max_pending = 1  # exercise the bounded queue
    assert json.dumps(pooled.run("val", progress=False)) == json.dumps(inline)  # NaN-safe
