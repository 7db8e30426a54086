"""Every shipped config works: it loads, builds its model as configured and runs one training
step with image summaries, checkpointing and validation on, at a small input.

Data: the configs' own dataset kind on data made here (a tiny synthetic set; a tiny tree in
the Cityscapes layout with every class). Backbone weights are the one thing never taken as
shipped: `imagenet` would download, so every run starts from random weights. In the default
suite, configs whose backbone is slow to build and step (ResNets, WRN-38, MobileNetV2) run
with `model.backbone.name=small` and everything else as shipped; `pytest -m slow` runs them
with their own backbone.
"""

import glob
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from gscnn_tf.config import load_config
from gscnn_tf.data import cityscapes
from gscnn_tf.data.synthetic import ensure_synthetic
from gscnn_tf.training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
SIZE = 64
GATE_TAGS = {"images/gate1_alpha", "images/gate2_alpha", "images/gate3_alpha"}


def write_cityscapes_tree(root, size=(SIZE, SIZE), per_split=2, seed=0):
    """A tiny tree in the Cityscapes layout: labelId maps holding every evaluated class."""
    rng = np.random.default_rng(seed)
    ids = np.array([label_id for _, label_id, _ in cityscapes.CLASSES] + [0, 255], np.uint8)
    for split in ("train", "val"):
        for d in ("leftImg8bit", "gtFine"):
            os.makedirs(os.path.join(root, d, split, "city"), exist_ok=True)
        for i in range(per_split):
            stem = f"city_{i:06d}_000019"
            image = rng.integers(0, 255, size + (3,), dtype=np.uint8)
            blocks = rng.choice(ids, (size[0] // 8, size[1] // 8))
            labels = np.kron(blocks, np.ones((8, 8), np.uint8)).astype(np.uint8)
            cv2.imwrite(os.path.join(root, "leftImg8bit", split, "city",
                                     stem + cityscapes.IMAGE_SUFFIX), image)
            cv2.imwrite(os.path.join(root, "gtFine", split, "city",
                                     stem + cityscapes.LABEL_IDS_SUFFIX), labels)


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("config_data")
    city = str(base / "cityscapes")
    write_cityscapes_tree(city)
    return {"cityscapes": city, "synthetic": str(base / "synthetic")}


def _cases():
    for path in CONFIGS:
        name = os.path.basename(path)
        backbone = load_config(path).model.backbone.name
        if backbone == "small":
            yield pytest.param(path, False, id=name)
        else:
            yield pytest.param(path, True, id=f"{name}-small")
            yield pytest.param(path, False, id=name, marks=pytest.mark.slow)


def test_there_are_configs_and_every_one_is_covered():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"synthetic.yaml", "cityscapes_resnet50.yaml", "deeplabv3plus_wrn38.yaml"} <= names


def _image_tags(run_dir):
    tags = set()
    for path in glob.glob(os.path.join(run_dir, "events", "*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value if v.tag.startswith("images/")}
    return tags


@pytest.mark.parametrize("path, small_backbone", list(_cases()))
def test_shipped_config_trains_one_step(path, small_backbone, data_roots, tmp_path):
    shipped = load_config(path)
    dataset = shipped.data.dataset
    overrides = [
        f"data.root={data_roots[dataset]}", f"data.crop_size=[{SIZE},{SIZE}]",
        "train.batch_size=2", "train.steps=1", "train.image_every=1",
        "train.checkpoint_every=1", "train.val_every=1", "train.log_every=1",
        f"train.run_dir={tmp_path / 'run'}", "model.backbone.weights=",
    ]
    if dataset == "synthetic":
        overrides += ["data.synthetic.num_train=4", "data.synthetic.num_val=2",
                      f"data.synthetic.height={SIZE}", f"data.synthetic.width={SIZE}"]
    if small_backbone:
        overrides += ["model.backbone.name=small", "model.backbone.base_width=8"]
    config = load_config(path, overrides)
    assert config.model.shape_stream == shipped.model.shape_stream
    assert config.loss == shipped.loss and config.train.optimizer == shipped.train.optimizer
    if dataset == "synthetic":
        ensure_synthetic(config)

    trainer = Trainer(config)
    expected = "small" if small_backbone else shipped.model.backbone.name
    assert expected in trainer.model.name
    result = trainer.train()

    run_dir = config.train.run_dir
    assert result["step"] == 1
    assert np.isfinite(result["train"]["total"])
    assert 0.0 <= result["val"]["miou"] <= 1.0
    assert trainer.checkpoints.latest.endswith("ckpt-1")
    assert os.path.isfile(os.path.join(run_dir, "metrics.json"))
    tags = _image_tags(run_dir)
    assert {"images/input", "images/ground_truth", "images/prediction_overlay"} <= tags
    if shipped.model.shape_stream:
        assert GATE_TAGS <= tags
    else:  # the baseline shows the panels it has
        assert not tags & GATE_TAGS
    pictures = trainer.write_pictures(2)
    sheets = sorted(glob.glob(os.path.join(pictures, "*.png")))
    assert len(sheets) == 2
    sheet = cv2.imread(sheets[0])
    panels = 7 if shipped.model.shape_stream else 3  # input, prediction, truth (+ boundary, gates)
    assert sheet.shape[1] == panels * SIZE + (panels - 1) * 4
