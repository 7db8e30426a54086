"""Synthetic scenes: determinism, class coverage, thin structures, files and the CLI."""

import os

import cv2
import numpy as np
import pytest
import yaml

from gscnn_tf import cli
from gscnn_tf.config import SyntheticConfig, load_config
from gscnn_tf.data import folder, pipeline, synthetic
from gscnn_tf.data.decode import DataError


def test_render_is_deterministic_by_seed():
    a = synthetic.render(0, "train", 3, 64, 80)
    b = synthetic.render(0, "train", 3, 64, 80)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape == (64, 80, 3) and a[1].shape == (64, 80) and a[0].dtype == np.uint8
    assert not np.array_equal(a[0], synthetic.render(1, "train", 3, 64, 80)[0])
    assert not np.array_equal(a[0], synthetic.render(0, "val", 3, 64, 80)[0])


def _horizontal_runs(mask):
    """Lengths of the horizontal runs of True in each row of a boolean mask."""
    runs = []
    for row in mask:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        runs.extend(edges[1::2] - edges[::2])
    return np.array(runs)


def test_scenes_have_all_classes_thin_structures_and_overlapping_colours():
    scenes = [synthetic.render(0, "train", i, 128, 128) for i in range(30)]
    labels = np.stack([s[1] for s in scenes])
    images = np.stack([s[0] for s in scenes]).astype(np.float32)
    assert len(synthetic.CLASSES) >= 6
    assert set(np.unique(labels)) == set(range(len(synthetic.CLASSES)))
    pole_runs = np.concatenate([_horizontal_runs(l == synthetic.POLE) for l in labels])
    assert np.median(pole_runs) <= 4 and pole_runs.min() >= 1  # poles 1-4 px wide
    wire_runs = np.concatenate([_horizontal_runs((l == synthetic.WIRE).T) for l in labels])
    assert np.median(wire_runs) <= 3  # wires 1-2 px thick (vertical runs, sagging lines)
    sign_sizes = [np.sum(l == synthetic.SIGN) for l in labels if (l == synthetic.SIGN).any()]
    assert np.median(sign_sizes) < 0.01 * 128 * 128  # small objects
    # colour statistics overlap: grey road, building and pole pixels share a brightness range
    grey = images.mean(-1)
    ranges = [np.percentile(grey[labels == c], [10, 90])
              for c in (synthetic.ROAD, synthetic.BUILDING, synthetic.POLE)]
    assert max(r[0] for r in ranges) < min(r[1] for r in ranges)


def test_generate_writes_the_folder_format_fast(tmp_path):
    import time

    start = time.perf_counter()
    config = SyntheticConfig(num_train=40, num_val=8, height=96, width=128, seed=3)
    root = synthetic.generate(str(tmp_path / "syn"), config)
    assert time.perf_counter() - start < 10
    assert len(folder.examples(root, "train")) == 40 and len(folder.examples(root, "val")) == 8
    image_path, mask_path, _ = folder.examples(root, "val")[2]
    image, labels = synthetic.render(3, "val", 2, 96, 128)
    np.testing.assert_array_equal(cv2.imread(image_path)[:, :, ::-1], image)
    np.testing.assert_array_equal(cv2.imread(mask_path, cv2.IMREAD_UNCHANGED), labels)
    classes = folder.read_classes(root)
    assert classes["names"] == [n for n, _ in synthetic.CLASSES]


def test_ensure_synthetic_generates_reuses_and_regenerates(tmp_path):
    root = tmp_path / "data"
    config = load_config(None, [f"data.root={root}", "data.synthetic.num_train=3",
                                "data.synthetic.num_val=2", "data.synthetic.height=32",
                                "data.synthetic.width=32"])
    assert synthetic.ensure_synthetic(config) == str(root)
    first = os.path.getmtime(root / "synthetic.yaml")
    synthetic.ensure_synthetic(config)
    assert os.path.getmtime(root / "synthetic.yaml") == first
    config.data.synthetic.num_train = 5
    synthetic.ensure_synthetic(config)
    assert len(os.listdir(root / "images" / "train")) == 5
    assert yaml.safe_load((root / "synthetic.yaml").read_text())["num_train"] == 5
    info = pipeline.dataset_info(config)
    assert info.num_classes == 10 and info.palette.shape == (10, 3)
    image, targets = next(iter(pipeline.build_dataset(config, "val", False, 1)))
    assert image.shape == (1, 32, 32, 3)


def test_ensure_synthetic_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    config = load_config(None, [f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="not empty and holds no synthetic.yaml"):
        synthetic.ensure_synthetic(config)
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_make_synthetic_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["make-synthetic", "--out", str(out), "--num-train", "4", "--num-val", "2",
                     "--height", "40", "--width", "48", "--seed", "7"]) == 0
    assert "wrote 4 train + 2 val images (40x48, seed 7)" in capsys.readouterr().out
    settings = yaml.safe_load((out / "synthetic.yaml").read_text())
    assert settings["seed"] == 7 and settings["height"] == 40
    np.testing.assert_array_equal(
        cv2.imread(str(out / "masks" / "train" / "train_00001.png"), cv2.IMREAD_UNCHANGED),
        synthetic.render(7, "train", 1, 40, 48)[1])
