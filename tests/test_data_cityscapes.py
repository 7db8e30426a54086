"""Cityscapes layout and label mapping, checked against the official `cityscapesscripts` table
on a tiny fake tree built here."""

import os

import cv2
import numpy as np
import pytest

from gscnn_tf.config import load_config
from gscnn_tf.data import cityscapes, pipeline
from gscnn_tf.data.decode import DataError

np.in1d = np.isin  # cityscapesscripts still calls np.in1d, removed in numpy 2.x
labels_module = pytest.importorskip("cityscapesscripts.helpers.labels")


def official_train_id(label_id):
    label = labels_module.id2label.get(int(label_id))
    if label is None or label.trainId in (-1, 255):
        return 255
    return label.trainId


def write_tree(root, split="val", cities=("aachen", "bochum"), per_city=2, size=(8, 16),
               seed=0, train_ids_for=()):
    """Fake Cityscapes files with every real labelId (0..33 and 255) in the label maps;
    returns {stem: labelIds array}."""
    rng = np.random.default_rng(seed)
    values = np.array([*range(34), 255], np.uint8)
    out = {}
    for city in cities:
        for d in ("leftImg8bit", "gtFine"):
            os.makedirs(os.path.join(root, d, split, city), exist_ok=True)
        for i in range(per_city):
            stem = f"{city}_{i:06d}_000019"
            image = rng.integers(0, 255, size + (3,), dtype=np.uint8)
            ids = rng.choice(values, size).astype(np.uint8)
            ids.flat[: len(values)] = values
            cv2.imwrite(os.path.join(root, "leftImg8bit", split, city,
                                     stem + cityscapes.IMAGE_SUFFIX), image)
            cv2.imwrite(os.path.join(root, "gtFine", split, city,
                                     stem + cityscapes.LABEL_IDS_SUFFIX), ids)
            if stem in train_ids_for:
                train = np.vectorize(official_train_id)(ids).astype(np.uint8)
                cv2.imwrite(os.path.join(root, "gtFine", split, city,
                                         stem + cityscapes.TRAIN_IDS_SUFFIX), train)
            out[stem] = ids
    return out


def test_info_matches_official_table():
    info = cityscapes.info()
    official = sorted((l for l in labels_module.labels if l.trainId not in (-1, 255)),
                      key=lambda l: l.trainId)
    assert info.num_classes == 19 == len(official)
    assert list(info.class_names) == [l.name for l in official]
    np.testing.assert_array_equal(info.palette, [l.color for l in official])


def test_label_ids_table_matches_official_table():
    table = cityscapes.label_tables()[0]
    for label in labels_module.labels:
        if label.id >= 0:
            assert table[label.id] == official_train_id(label.id), label.name
    assert table[255] == 255  # license plate (-1) as stored in 8-bit PNGs
    assert (table[34:255] == -1).all()  # not Cityscapes ids: out of range


def test_pipeline_maps_label_ids_like_cityscapesscripts(tmp_path):
    trees = write_tree(str(tmp_path))
    config = load_config(None, ["data.dataset=cityscapes", f"data.root={tmp_path}"])
    pairs = pipeline.list_examples(config, "val")
    assert [os.path.basename(p).split("_leftImg8bit")[0] for p, _ in pairs] == sorted(trees)
    batches = list(pipeline.build_dataset(config, "val", training=False, batch_size=1))
    for (image_path, _), (image, targets) in zip(pairs, batches):
        ids = trees[os.path.basename(image_path).split("_leftImg8bit")[0]]
        expected = np.vectorize(official_train_id)(ids)
        np.testing.assert_array_equal(targets["labels"][0].numpy(), expected)
        np.testing.assert_array_equal(image[0].numpy(), cv2.imread(image_path)[:, :, ::-1])


def test_label_train_ids_used_directly_when_present(tmp_path):
    trees = write_tree(str(tmp_path), train_ids_for={"aachen_000001_000019"})
    config = load_config(None, ["data.dataset=cityscapes", f"data.root={tmp_path}"])
    pairs = dict(pipeline.list_examples(config, "val"))
    label_paths = sorted(pairs.values())
    assert label_paths[1].endswith("aachen_000001_000019_gtFine_labelTrainIds.png")
    assert sum(p.endswith(cityscapes.LABEL_IDS_SUFFIX) for p in label_paths) == 3
    for image_path, label_path in pairs.items():
        _, labels = pipeline.load_example(config, image_path, label_path)
        stem = os.path.basename(image_path).split("_leftImg8bit")[0]
        np.testing.assert_array_equal(labels.numpy(),
                                      np.vectorize(official_train_id)(trees[stem]))


def test_root_from_environment_variable(tmp_path, monkeypatch):
    write_tree(str(tmp_path), split="train", per_city=1)
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    config = load_config(None, ["data.dataset=cityscapes"])
    assert len(pipeline.list_examples(config, "train")) == 2
    monkeypatch.delenv("CITYSCAPES_DATASET")
    with pytest.raises(DataError, match="CITYSCAPES_DATASET"):
        pipeline.list_examples(config, "train")


def test_missing_and_extra_files_are_named(tmp_path):
    write_tree(str(tmp_path), per_city=2)
    config = load_config(None, ["data.dataset=cityscapes", f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="missing folder .*leftImg8bit/train"):
        pipeline.list_examples(config, "train")
    with pytest.raises(DataError, match="expected one of train, val, test"):
        pipeline.list_examples(config, "training")
    label = tmp_path / "gtFine" / "val" / "bochum" / "bochum_000001_000019_gtFine_labelIds.png"
    os.rename(label, label.with_name("bochum_000007_000019_gtFine_labelIds.png"))
    with pytest.raises(DataError, match="no label for image .*bochum_000001_000019_leftImg8bit"):
        pipeline.list_examples(config, "val")
    image = tmp_path / "leftImg8bit" / "val" / "bochum" / "bochum_000001_000019_leftImg8bit.png"
    os.remove(image)
    with pytest.raises(DataError, match="label without image: .*bochum_000007_000019_gtFine"):
        pipeline.list_examples(config, "val")
