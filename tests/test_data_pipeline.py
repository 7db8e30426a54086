"""tf.data pipeline: folder source, decoding, bad data, determinism, sharding, edges."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
import yaml

from gscnn_tf.config import load_config
from gscnn_tf.data import pipeline
from gscnn_tf.data.decode import DataError
from conftest import two_cpu_strategy

NO_AUG = ["data.scale_range=[1.0, 1.0]", "data.hflip=false", "data.color_jitter=0.0",
          "data.blur_prob=0.0"]


def write_folder(root, split="train", count=4, size=(16, 24), num_classes=3, seed=0,
                 ignore=255):
    """A folder dataset whose image i is the constant grey 10 * (i + 1) and whose masks hold
    random class ids; returns (images, masks) as numpy arrays."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub, split), exist_ok=True)
    with open(os.path.join(root, "classes.yaml"), "w") as f:
        yaml.safe_dump({"names": [f"c{i}" for i in range(num_classes)],
                        "ignore_label": ignore}, f)
    images, masks = [], []
    for i in range(count):
        image = np.full(size + (3,), 10 * (i + 1), np.uint8)
        mask = rng.integers(0, num_classes, size).astype(np.uint8)
        cv2.imwrite(os.path.join(root, "images", split, f"{i:03d}.png"), image)
        cv2.imwrite(os.path.join(root, "masks", split, f"{i:03d}.png"), mask)
        images.append(image)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def folder_config(root, *overrides):
    return load_config(None, ["data.dataset=folder", f"data.root={root}", *overrides])


def test_eval_path_order_sizes_and_labels(tmp_path):
    images, masks = write_folder(str(tmp_path), "val", count=3)
    masks[1, 0, 0] = 255
    cv2.imwrite(str(tmp_path / "masks" / "val" / "001.png"), masks[1])
    config = folder_config(tmp_path)
    pairs = pipeline.list_examples(config, "val")
    assert [os.path.basename(p) for p, _ in pairs] == ["000.png", "001.png", "002.png"]
    batches = list(pipeline.build_dataset(config, "val", training=False, batch_size=1))
    assert len(batches) == 3
    for i, (image, targets) in enumerate(batches):
        assert image.dtype == tf.float32 and image.shape == (1, 16, 24, 3)
        np.testing.assert_array_equal(image[0].numpy(), images[i].astype(np.float32))
        np.testing.assert_array_equal(targets["labels"][0].numpy(), masks[i].astype(np.int32))
        assert targets["labels"].dtype == tf.int32 and targets["edges"].dtype == tf.float32
    image, labels = pipeline.load_example(config, *pairs[1])
    np.testing.assert_array_equal(labels.numpy(), masks[1])


def test_eval_batches_of_different_sizes_are_padded_with_ignore(tmp_path):
    write_folder(str(tmp_path), "val", count=1, size=(10, 12))
    image = np.full((14, 8, 3), 50, np.uint8)
    cv2.imwrite(str(tmp_path / "images" / "val" / "big.png"), image)
    cv2.imwrite(str(tmp_path / "masks" / "val" / "big.png"), np.ones((14, 8), np.uint8))
    (image, targets), = pipeline.build_dataset(folder_config(tmp_path), "val", False, 2)
    assert image.shape == (2, 14, 12, 3)
    labels = targets["labels"].numpy()
    assert (labels[1, :, 8:] == 255).all() and (labels[0, 10:] == 255).all()
    assert (labels[1, :, :8] == 1).all()
    assert (targets["edges"].numpy()[0, 10:] == 0).all()


def test_gray_rgba_and_jpeg_images_become_rgb(tmp_path):
    write_folder(str(tmp_path), "val", count=1, size=(8, 8))
    folder = tmp_path / "images" / "val"
    os.remove(folder / "000.png")
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    cv2.imwrite(str(folder / "000.png"), gray)
    (image, _), = pipeline.build_dataset(folder_config(tmp_path), "val", False, 1)
    np.testing.assert_array_equal(image[0].numpy(), np.repeat(gray[..., None], 3, -1))
    os.remove(folder / "000.png")
    bgra = np.dstack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
    cv2.imwrite(str(folder / "000.png"), bgra)
    (image, _), = pipeline.build_dataset(folder_config(tmp_path), "val", False, 1)
    np.testing.assert_array_equal(image[0, 0, 0].numpy(), [30, 20, 10])
    os.remove(folder / "000.png")
    cv2.imwrite(str(folder / "000.jpg"), np.full((8, 8, 3), (200, 100, 50), np.uint8))
    (image, _), = pipeline.build_dataset(folder_config(tmp_path), "val", False, 1)
    np.testing.assert_allclose(image[0, 4, 4].numpy(), [50, 100, 200], atol=3)


def test_training_batches_shapes_and_ranges(tmp_path):
    write_folder(str(tmp_path), count=3, size=(20, 30))
    config = folder_config(tmp_path, "data.crop_size=[16, 16]", "data.deterministic=true")
    image, targets = next(iter(pipeline.build_dataset(config, "train", True, 4)))
    assert image.shape == (4, 16, 16, 3) and targets["labels"].shape == (4, 16, 16)
    assert targets["edges"].shape == (4, 16, 16)
    assert 0.0 <= image.numpy().min() and image.numpy().max() <= 255.0
    assert set(np.unique(targets["labels"])) <= {0, 1, 2, 255}


def _take(dataset, n):
    return [(image.numpy(), targets["labels"].numpy(), targets["edges"].numpy())
            for image, targets in dataset.take(n)]


def test_deterministic_for_a_fixed_seed(tmp_path):
    write_folder(str(tmp_path), count=5, size=(24, 24))
    config = folder_config(tmp_path, "data.crop_size=[16, 16]", "data.deterministic=true",
                           "data.class_uniform_fraction=0.5")
    first = _take(pipeline.build_dataset(config, "train", True, 2), 4)
    second = _take(pipeline.build_dataset(config, "train", True, 2), 4)
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    config.data.seed = 1
    other = _take(pipeline.build_dataset(config, "train", True, 2), 4)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_edges_computed_after_augmentation(tmp_path):
    edges_module = pytest.importorskip("gscnn_tf.data.edges")
    write_folder(str(tmp_path), count=2, size=(24, 24))
    config = folder_config(tmp_path, "data.crop_size=[20, 20]", "data.deterministic=true",
                           "data.edge_radius=1")
    for _, targets in pipeline.build_dataset(config, "train", True, 2).take(3):
        expected = edges_module.label_edges(targets["labels"], 1)
        edges, labels = targets["edges"].numpy(), targets["labels"].numpy()
        np.testing.assert_array_equal(edges, expected.numpy())
        # independent of label_edges: a pixel next to a different (augmented) label is an edge
        changes = np.zeros_like(edges, bool)
        changes[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        changes[:, :-1] |= labels[:, 1:] != labels[:, :-1]
        changes[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
        changes[:, :, :-1] |= labels[:, :, 1:] != labels[:, :, :-1]
        assert changes.any() and (edges[changes] == 1).all()


def _context(workers, worker):
    return tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                      num_replicas_in_sync=workers)


def test_sharding_gives_disjoint_examples(tmp_path):
    write_folder(str(tmp_path), count=7, size=(8, 8))
    config = folder_config(tmp_path, "data.crop_size=[8, 8]", *NO_AUG)
    seen = []
    for worker in range(2):
        values = {int(image[0, 0, 0, 0]) for image, _ in pipeline.build_dataset(
            config, "train", False, 2, _context(2, worker))}
        trained = {int(v) for image, _ in pipeline.build_dataset(
            config, "train", True, 2, _context(2, worker)).take(6)
            for v in image.numpy()[:, 0, 0, 0]}
        assert trained == values  # the training stream cycles through the same shard
        seen.append(values)
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {10 * (i + 1) for i in range(7)}


def test_global_batch_is_split_over_pipelines(tmp_path):
    write_folder(str(tmp_path), count=4, size=(8, 8))
    config = folder_config(tmp_path, "data.crop_size=[8, 8]")
    image, _ = next(iter(pipeline.build_dataset(config, "train", True, 4, _context(2, 1))))
    assert image.shape[0] == 2


def test_corrupt_image_error_names_the_file(tmp_path):
    write_folder(str(tmp_path), count=2)
    bad = tmp_path / "images" / "train" / "001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    config = folder_config(tmp_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="corrupt or unreadable image.*001"):
        list(pipeline.build_dataset(config, "train", False, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="001.png"):
        pipeline.load_example(config, str(bad), str(tmp_path / "masks" / "train" / "001.png"))


def test_skip_corrupt_skips_with_a_warning_naming_the_file(tmp_path, capfd):
    write_folder(str(tmp_path), count=3)
    (tmp_path / "masks" / "train" / "002.png").write_bytes(b"not a png at all")
    config = folder_config(tmp_path, "data.skip_corrupt=true")
    batches = list(pipeline.build_dataset(config, "train", False, 1))
    assert [int(image[0, 0, 0, 0]) for image, _ in batches] == [10, 20]
    err = capfd.readouterr().err
    assert "skipping corrupt or unreadable label file: " in err and "002.png" in err
    assert "(expected an 8-bit single-channel PNG)" in err


def test_size_mismatch_error_names_the_pair(tmp_path):
    write_folder(str(tmp_path), count=2, size=(16, 24))
    cv2.imwrite(str(tmp_path / "masks" / "train" / "001.png"), np.zeros((16, 20), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"sizes differ.*images/train/001.png is 16x24.*masks/train/001.png"
                             r" is 16x20"):
        list(pipeline.build_dataset(folder_config(tmp_path), "train", False, 1))


def test_out_of_range_labels_become_ignore_with_a_counted_warning(tmp_path, capfd):
    _, masks = write_folder(str(tmp_path), count=1, num_classes=3)
    masks[0, :2, :3] = 7
    cv2.imwrite(str(tmp_path / "masks" / "train" / "000.png"), masks[0])
    (_, targets), = pipeline.build_dataset(folder_config(tmp_path), "train", False, 1)
    labels = targets["labels"][0].numpy()
    assert (labels[:2, :3] == 255).all()
    np.testing.assert_array_equal(labels[2:], masks[0, 2:])
    err = capfd.readouterr().err
    assert "000.png: 6 pixels with values outside the dataset's classes (e.g. 7) set to ignore 255" in err


def test_palette_mask_is_rejected(tmp_path):
    write_folder(str(tmp_path), count=1)
    cv2.imwrite(str(tmp_path / "masks" / "train" / "000.png"), np.zeros((16, 24, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="000.png is not an 8-bit single"):
        list(pipeline.build_dataset(folder_config(tmp_path), "train", False, 1))


@pytest.mark.parametrize("case, message", [
    ("missing_root", "is not a folder"),
    ("no_classes", "classes.yaml not found"),
    ("empty", "missing folder"),
    ("no_mask", "no mask for image .*003.png"),
    ("extra_mask", "mask without image: .*masks/train/009.png"),
    ("no_root", "needs data.root"),
    ("bad_dataset", "expected one of synthetic, folder, cityscapes"),
])
def test_wrong_or_empty_root_errors(tmp_path, case, message):
    root = tmp_path / "d"
    overrides = []
    if case != "missing_root":
        write_folder(str(root), count=4)
    if case == "no_classes":
        os.remove(root / "classes.yaml")
    if case == "empty":
        root = tmp_path / "e"
        write_folder(str(root), count=1)
        for sub in ("images", "masks"):
            os.rename(root / sub / "train", root / sub / "other")
    if case == "no_mask":
        os.remove(root / "masks" / "train" / "003.png")
    if case == "extra_mask":
        cv2.imwrite(str(root / "masks" / "train" / "009.png"), np.zeros((4, 4), np.uint8))
    if case == "no_root":
        root = ""
    if case == "bad_dataset":
        overrides = ["data.dataset=coco"]
    config = load_config(None, ["data.dataset=folder", f"data.root={root}", *overrides])
    with pytest.raises(DataError, match=message):
        pipeline.build_dataset(config, "train", True, 1)


def test_load_image_decodes_and_names_bad_files(tmp_path):
    path = str(tmp_path / "x.png")
    cv2.imwrite(path, np.full((5, 7, 3), (1, 2, 3), np.uint8))
    image = pipeline.load_image(path)
    assert image.dtype == tf.float32 and image.shape == (5, 7, 3)
    np.testing.assert_array_equal(image[0, 0].numpy(), [3, 2, 1])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(tf.errors.InvalidArgumentError, match="unreadable image file: .*bad.jpg"):
        pipeline.load_image(str(tmp_path / "bad.jpg"))


def test_distribute_datasets_from_function_under_mirrored_strategy(tmp_path):
    write_folder(str(tmp_path), count=6, size=(12, 12))
    config = folder_config(tmp_path, "data.crop_size=[8, 8]", "data.deterministic=true")
    strategy = two_cpu_strategy()
    dataset = strategy.distribute_datasets_from_function(
        lambda context: pipeline.build_dataset(config, "train", True, 4, context))
    image, targets = next(iter(dataset))
    local = strategy.experimental_local_results(image)
    assert len(local) == 2 and all(x.shape == (2, 8, 8, 3) for x in local)
    assert all(t.shape == (2, 8, 8) for t in strategy.experimental_local_results(
        targets["labels"]))


def test_nondeterministic_mode_draws_a_fresh_seed(tmp_path):
    write_folder(str(tmp_path), count=2, size=(24, 24))
    config = folder_config(tmp_path, "data.crop_size=[16, 16]")
    first = _take(pipeline.build_dataset(config, "train", True, 2), 2)
    second = _take(pipeline.build_dataset(config, "train", True, 2), 2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, second))
