"""The tf.data input pipeline: files -> decoded, label-mapped, augmented, edge-annotated batches.

    dataset = build_dataset(config, "train", training=True, batch_size=8)
    for image, targets in dataset:   # float32 [B, H, W, 3] 0..255; targets["labels"] int32
        ...                           # [B, H, W] (ignore 255), targets["edges"] f32 {0, 1}

`data.dataset` picks the source: `synthetic` (generated into `data.root`, default
data/synthetic, when missing), `folder` (see `gscnn_tf.data.folder`) or `cityscapes`.
Only TF ops run per example. Training: every pass reshuffles the (sharded) file list, and
example k of a worker's stream is augmented with the stateless seed (base, k * workers +
worker): `data.deterministic` fixes the base at `data.seed` and makes the element order
deterministic too. Edges (`label_edges`, `data.edge_radius`) are computed from the labels
after augmentation.

Corrupt files stop the pipeline with an error naming the file; with `data.skip_corrupt` they
are left out instead, with one warning per file in the first pass over the files (the first
SKIP_WARNINGS by name, then a count), and a pass over the split in which every file was
skipped is an error: the pipeline never waits on a split that holds nothing it can read.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from gscnn_tf.data import augment, cityscapes, folder, synthetic
from gscnn_tf.data.decode import (DataError, DatasetInfo, decode_pair_checked, load_image,
                                  skip_warning)
from gscnn_tf.data.decode import load_example as _load_example

DATASETS = ("synthetic", "folder", "cityscapes")
# With data.skip_corrupt, the corrupt files of a split named one by one; the rest are counted.
SKIP_WARNINGS = 20

__all__ = ["DataError", "DatasetInfo", "build_dataset", "dataset_info", "label_tables",
           "list_examples", "load_example", "load_image"]


def _dataset_name(config) -> str:
    name = config.data.dataset
    if name not in DATASETS:
        raise DataError(f"data.dataset '{name}': expected one of {', '.join(DATASETS)}")
    return name


def _folder_root(config) -> str:
    """The root of a folder-format dataset; the synthetic one is generated when missing."""
    if config.data.dataset == "synthetic":
        return synthetic.ensure_synthetic(config)
    if not config.data.root:
        raise DataError("data.dataset 'folder' needs data.root: a folder holding "
                        "classes.yaml, images/<split>/ and masks/<split>/")
    return config.data.root


def dataset_info(config) -> DatasetInfo:
    """num_classes, class_names, palette (uint8 [C, 3]) and ignore_label of the dataset."""
    name, ignore = _dataset_name(config), config.data.ignore_label
    if name == "cityscapes":
        return cityscapes.info(ignore)
    if name == "synthetic":
        return DatasetInfo(len(synthetic.CLASSES), tuple(n for n, _ in synthetic.CLASSES),
                           np.array([c for _, c in synthetic.CLASSES], np.uint8), ignore)
    return folder.info(_folder_root(config), ignore)


def label_tables(config) -> np.ndarray:
    """int32 [T, 256]: raw label value -> train id, one row per label encoding."""
    name, ignore = _dataset_name(config), config.data.ignore_label
    if name == "cityscapes":
        return cityscapes.label_tables(ignore)
    return folder.label_tables(_folder_root(config), ignore)


def _examples(config, split: str) -> list[tuple[str, str, int]]:
    name = _dataset_name(config)
    if name == "cityscapes":
        return cityscapes.examples(config.data.root, split)
    return folder.examples(_folder_root(config), split)


def list_examples(config, split: str) -> list[tuple[str, str]]:
    """Sorted (image path, label path) pairs of `split`; the order of the evaluation dataset
    (`build_dataset(..., training=False)` without sharding)."""
    return [(image, label) for image, label, _ in _examples(config, split)]


def load_example(config, image_path: str, label_path: str, warn: bool = True):
    """(image float32 [H, W, 3] RGB 0..255, labels int32 [H, W] train ids) of one pair, the
    pipeline's decode and label mapping; errors name the file. With `data.skip_corrupt`,
    None (after a warning naming the file, when `warn`) when a file is corrupt."""
    row = cityscapes.table_row(label_path) if _dataset_name(config) == "cityscapes" else 0
    return _load_example(image_path, label_path, label_tables(config)[row],
                         config.data.ignore_label, config.data.skip_corrupt, warn)


def _watch_skipped(dataset, count: int, split: str):
    """Passes on (k, image, labels, problem) elements in file order (k: the file's position
    in the stream, `count` files a pass). In the first pass, warns about the first
    SKIP_WARNINGS skipped files one by one and counts the rest; fails at the end of any pass
    in which every file was skipped."""
    message = (f"data.skip_corrupt: split '{split}' has no valid example in a whole pass over "
               f"its {count} files: every one was skipped as corrupt or unreadable (see the "
               "warnings naming them)")

    def step(state, element):
        valid, skipped = state
        k, problem = element[0], element[-1]
        ok = tf.equal(problem, "")
        first_pass, end = k < count, tf.equal(k % count, count - 1)
        skip = tf.logical_and(first_pass, tf.logical_not(ok))
        warn = tf.cond(tf.logical_and(skip, skipped < SKIP_WARNINGS),
                       lambda: skip_warning(problem), tf.no_op)
        skipped += tf.cast(skip, tf.int64)
        more = tf.cond(
            tf.logical_and(tf.logical_and(first_pass, end), skipped > SKIP_WARNINGS),
            lambda: skip_warning(tf.strings.join([
                tf.strings.as_string(skipped - SKIP_WARNINGS), " more corrupt or unreadable ",
                f"files of split '{split}' (", tf.strings.as_string(skipped),
                f" of its {count} files in all)"])),
            tf.no_op)
        valid += tf.cast(ok, tf.int64)
        check = tf.debugging.Assert(tf.logical_or(tf.logical_not(end), valid > 0), [message])
        with tf.control_dependencies([warn, more, check]):
            valid = tf.where(end, tf.constant(0, tf.int64), valid)
        return (valid, skipped), element

    zero = tf.constant(0, tf.int64)
    return dataset.scan((zero, zero), step)


def _base_seed(data_config) -> int:
    if data_config.deterministic:
        return data_config.seed
    return int.from_bytes(os.urandom(4), "little") >> 1


def _with_edges(image, labels, radius):
    from gscnn_tf.data.edges import label_edges

    return image, {"labels": labels, "edges": label_edges(labels, radius)}


def build_dataset(config, split: str, training: bool, batch_size: int, input_context=None):
    """A `tf.data.Dataset` of (image float32 [B, H, W, 3] 0..255,
    {"labels": int32 [B, H, W], "edges": float32 [B, H, W]}).

    training=True: endless, shuffled, augmented crops of `data.crop_size`, batches of exactly
    `batch_size` (drop_remainder). training=False: one pass in `list_examples` order, no
    augmentation, each image at its own size; a batch of images of different sizes is padded
    to the largest (image 0, labels ignore, edges 0), so use batch_size 1 for exact full
    images of varying sizes (Cityscapes images all have one size).
    input_context (`tf.distribute.InputContext`): `batch_size` is then the global batch; this
    pipeline reads only its shard of the files (disjoint between pipelines) and batches
    `input_context.get_per_replica_batch_size(batch_size)`.
    """
    data = config.data
    info = dataset_info(config)
    examples = _examples(config, split)
    tables = tf.constant(label_tables(config), tf.int32)
    workers, worker = 1, 0
    if input_context is not None:
        workers, worker = input_context.num_input_pipelines, input_context.input_pipeline_id
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if len(examples) < workers:
        raise DataError(f"split '{split}' has {len(examples)} examples, fewer than the "
                        f"{workers} input pipelines that must each get some")
    images, labels, rows = (list(column) for column in zip(*examples))
    files = tf.data.Dataset.from_tensor_slices((images, labels, rows)).shard(workers, worker)
    deterministic = data.deterministic or not training
    options = tf.data.Options()
    options.deterministic = deterministic

    count = (len(examples) - worker + workers - 1) // workers

    def decoded(files, deterministic):
        """(k, image, labels) of the readable pairs, k numbering the files of the stream; in
        file order when `deterministic` (`data.skip_corrupt` needs that to see whole passes,
        and `_watch_skipped` warns about the skipped files)."""

        def decode(k, item):
            image_path, label_path, row = item
            pair = decode_pair_checked(image_path, label_path, tf.gather(tables, row),
                                       data.skip_corrupt, data.ignore_label, warn=False)
            return pair.map(lambda image, labels, problem: (k, image, labels, problem))

        dataset = files.enumerate().interleave(
            decode, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic or data.skip_corrupt)
        if data.skip_corrupt:
            dataset = _watch_skipped(dataset, count, split)
        return dataset.filter(lambda k, image, labels, problem: tf.equal(problem, "")).map(
            lambda k, image, labels, problem: (k, image, labels))

    if not training:
        dataset = decoded(files, True)
        dataset = dataset.map(lambda k, image, labels: _with_edges(
            tf.cast(image, tf.float32), labels, data.edge_radius),
            num_parallel_calls=tf.data.AUTOTUNE)
        padding = (tf.constant(0.0), {"labels": tf.constant(data.ignore_label),
                                      "edges": tf.constant(0.0)})
        dataset = dataset.padded_batch(batch_size, padding_values=padding)
        return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)

    base = _base_seed(data)
    files = files.shuffle(count, seed=base if data.deterministic else None,
                          reshuffle_each_iteration=True).repeat()

    def train_map(k, image, labels):
        seed = tf.stack([tf.constant(base, tf.int64), k * workers + worker])
        image, labels = augment.augment(image, labels, seed, data, info.num_classes)
        return _with_edges(image, labels, data.edge_radius)

    dataset = decoded(files, deterministic)
    dataset = dataset.map(train_map, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
