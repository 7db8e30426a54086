"""Reading one image/label pair with TF ops only, so bad files are named from inside tf.data.

A decode error inside a `tf.data` map carries no file name. Here each file is decoded in a
one-element dataset with `ignore_errors()`, followed by a sentinel element: an empty result
means the file could not be read or decoded, and the caller then raises (or warns, with
`skip_corrupt`) naming the file. Labels go through a 256-entry lookup table, raw value ->
train id, where `OUT_OF_RANGE` marks values outside the dataset's classes; those pixels become
ignore and are counted in a warning printed (by `tf.print`, to stderr) with the file name.

The checks raise `tf.errors.InvalidArgumentError` from inside TensorFlow ("assertion failed:
[<message>]"); `data_error_message` recovers the message for the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from gscnn_tf.errors import DataError

OUT_OF_RANGE = -1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How the messages of the data checks start (see `data_error_message`).
CHECK_MESSAGES = ("corrupt or unreadable ", "label file ", "image and label sizes differ",
                  "data.skip_corrupt: ")
SKIP_WARNING = "gscnn_tf.data WARNING: skipping "


@dataclass(frozen=True)
class DatasetInfo:
    """What consumers need to know about a dataset's classes.

    palette: uint8 [num_classes, 3] RGB colours; ignore_label: the label value for "no class"
    in the pipeline's output (255 by default).
    """

    num_classes: int
    class_names: tuple
    palette: np.ndarray
    ignore_label: int


def lookup_table(values: dict, ignore_values=(), ignore_label: int = 255) -> np.ndarray:
    """A [256] int32 table: `values` {raw value: train id}, `ignore_values` -> ignore_label,
    every other raw value -> OUT_OF_RANGE."""
    table = np.full([256], OUT_OF_RANGE, np.int32)
    for raw in ignore_values:
        table[raw] = ignore_label
    for raw, train_id in values.items():
        table[raw] = train_id
    return table


def _decode_image(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3]), tf.constant(b"")


def _decode_label(path):
    contents = tf.io.read_file(path)
    labels = tf.io.decode_png(contents, channels=1)[:, :, 0]
    return labels, tf.strings.substr(contents, 0, 26)


def _try_decode(path, decode_fn, empty):
    """One element (decoded, header, ok): ok is False when the file can't be read/decoded."""
    good = tf.data.Dataset.from_tensors(path).map(decode_fn).ignore_errors()
    good = good.map(lambda x, header: (x, header, True))
    bad = tf.data.Dataset.from_tensors((empty, tf.constant(b""), False))
    return good.concatenate(bad).take(1)


def _problem(ok, path, what):
    """"" when the file could be read, else the message naming it and what was expected."""
    expected = "a PNG or JPEG image" if what == "image" else "an 8-bit single-channel PNG"
    return tf.where(ok, tf.constant(""), tf.strings.join([
        f"corrupt or unreadable {what} file: ", path, f" (expected {expected})"]))


def skip_warning(problem):
    """Prints the `skip_corrupt` warning for a pair's problem message (stderr)."""
    return tf.print(tf.strings.join([SKIP_WARNING, problem]))


def data_error_message(error) -> str | None:
    """The message of a data check (a corrupt file, a label file of the wrong kind, image
    and label sizes that differ, a split whose every file was skipped) carried by a
    TensorFlow error, or None when `error` is not one of them."""
    if not isinstance(error, tf.errors.InvalidArgumentError):
        return None
    text = error.message
    start = text.find("assertion failed: [")
    if start < 0:
        return None
    message = text[start + len("assertion failed: ["):].split("\n")[0].strip()
    message = (message[:-1] if message.endswith("]") else message).replace("\\'", "'")
    return message if message.startswith(CHECK_MESSAGES) else None


def _check_label_format(header, path):
    """An 8-bit single-channel PNG: other kinds (palette, RGB, 16-bit) would decode to
    values that are not class ids."""
    is_png = tf.equal(tf.strings.substr(header, 0, 8), _PNG_SIGNATURE)
    depth_and_type = tf.strings.substr(header, 24, 2)
    good = tf.logical_and(is_png, tf.equal(depth_and_type, b"\x08\x00"))
    message = tf.strings.join([
        "label file ", path, " is not an 8-bit single-channel PNG (got PNG bit depth/colour "
        "type bytes ", tf.strings.as_string(tf.io.decode_raw(depth_and_type, tf.uint8)),
        "; palette, RGB, 16-bit and JPEG masks are not supported): expected class ids as "
        "8-bit grayscale"])
    return tf.debugging.Assert(good, [message])


def _map_labels(raw, table, path, ignore_label):
    """uint8 [H, W] raw values -> int32 train ids; out-of-range values -> ignore + warning."""
    labels = tf.gather(table, tf.cast(raw, tf.int32))
    bad = tf.equal(labels, OUT_OF_RANGE)
    count = tf.reduce_sum(tf.cast(bad, tf.int32))
    warn = tf.cond(
        count > 0,
        lambda: tf.print(tf.strings.join([
            "gscnn_tf.data WARNING: ", path, ": ", tf.strings.as_string(count),
            " pixels with values outside the dataset's classes (e.g. ",
            tf.strings.as_string(tf.boolean_mask(raw, bad)[0]),
            f") set to ignore {ignore_label}"])),
        tf.no_op)
    with tf.control_dependencies([warn]):
        return tf.where(bad, ignore_label, labels)


def decode_pair_checked(image_path, label_path, table, skip_corrupt=False, ignore_label=255,
                        warn=True):
    """A dataset of exactly one element (image uint8 [H, W, 3], labels int32 [H, W], problem
    string) for one pair: problem is "" when both files were read, else (with `skip_corrupt`)
    the message naming the corrupt file, with empty image and labels; the message is printed
    as a warning when `warn` (a bool scalar).

    table: int32 [256] raw label value -> train id (see `lookup_table`). Raises
    InvalidArgumentError naming the file for a corrupt file (without `skip_corrupt`), a label
    file that is not an 8-bit single-channel PNG, or an image/label size mismatch.
    """
    images = _try_decode(image_path, _decode_image, tf.zeros([0, 0, 3], tf.uint8))
    labels = _try_decode(label_path, _decode_label, tf.zeros([0, 0], tf.uint8))

    def check(image_item, label_item):
        image, _, image_ok = image_item
        raw, header, label_ok = label_item
        problem = tf.where(image_ok, _problem(label_ok, label_path, "label"),
                           _problem(image_ok, image_path, "image"))
        ok = tf.equal(problem, "")
        if skip_corrupt:
            report = tf.cond(tf.logical_or(ok, tf.logical_not(warn)), tf.no_op,
                             lambda: skip_warning(problem))
        else:
            report = tf.debugging.Assert(ok, [problem])
        with tf.control_dependencies([report]):
            return image, raw, header, tf.identity(problem)

    def finish(image, raw, header):
        image_hw, label_hw = tf.shape(image)[:2], tf.shape(raw)
        same = tf.reduce_all(tf.equal(image_hw, label_hw))
        message = tf.strings.join([
            "image and label sizes differ: ", image_path, " is ",
            tf.strings.reduce_join(tf.strings.as_string(image_hw), separator="x"), ", ",
            label_path, " is ",
            tf.strings.reduce_join(tf.strings.as_string(label_hw), separator="x")])
        checks = [_check_label_format(header, label_path), tf.debugging.Assert(same, [message])]
        with tf.control_dependencies(checks):
            return tf.identity(image), _map_labels(raw, table, label_path, ignore_label)

    def finish_if_ok(image, raw, header, problem):
        image, labels = tf.cond(tf.equal(problem, ""), lambda: finish(image, raw, header),
                                lambda: (image, tf.zeros([0, 0], tf.int32)))
        return image, labels, problem

    return tf.data.Dataset.zip((images, labels)).map(check).map(finish_if_ok)


def load_example(image_path, label_path, table, ignore_label: int = 255,
                 skip_corrupt: bool = False, warn: bool = True):
    """(image float32 [H, W, 3] RGB 0..255, labels int32 [H, W]) for one pair; errors name the
    file. Works eagerly (evaluation, prediction) and inside tf.data; with `skip_corrupt`
    (eagerly only) it returns None, after a warning naming the file (when `warn`), when a file
    is corrupt."""
    dataset = decode_pair_checked(image_path, label_path, tf.constant(table, tf.int32),
                                  skip_corrupt, ignore_label, warn)
    image, labels, problem = dataset.get_single_element()
    if skip_corrupt and problem.numpy():
        return None
    return tf.cast(image, tf.float32), labels


def load_image(path):
    """float32 [H, W, 3] RGB 0..255 of a PNG/JPEG (grey and RGBA converted); an unreadable
    or corrupt file raises InvalidArgumentError naming it."""
    image, _, ok = _try_decode(tf.convert_to_tensor(path), _decode_image,
                               tf.zeros([0, 0, 3], tf.uint8)).get_single_element()
    tf.debugging.Assert(ok, [tf.strings.join(["corrupt or unreadable image file: ", path,
                                              " (expected a readable PNG or JPEG)"])])
    return tf.cast(image, tf.float32)
