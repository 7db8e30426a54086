"""gscnn_tf.ops.canny against OpenCV's cv2.Canny: exact parity (zero mismatched pixels) on
scikit-image's photos, noise at odd sizes, batches, float input, the multi-channel mode, the
bounded-steps variant and inside a Keras functional model with dynamic spatial dims."""

import cv2
import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from gscnn_tf.ops import Canny, canny

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def _compiled(depth=3, **kwargs):
    spec = tf.TensorSpec([None, None, None, depth], tf.uint8)
    return tf.function(lambda x: canny(x, **kwargs), input_signature=[spec])


_GRAY3 = _compiled(3)
_GRAY1 = _compiled(1)
_POOL3 = _compiled(3, step_form="pool")
_BITS1 = _compiled(1, step_form="bits")
_MAX3 = _compiled(3, channels="max")
_FUSED3 = _compiled(3, step_form="fused")
_FUSED1 = _compiled(1, step_form="fused")


def _photo(name):
    """RGB uint8 [H, W, 3] (the gray `camera` photo is stacked to 3 equal channels)."""
    img = getattr(skimage.data, name)()
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]


def _reference(rgb, low=10, high=100):
    return cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high) > 0


def _edges(fn, image):
    return fn(tf.constant(image[None])).numpy()[0, ..., 0] > 0.5


def _noise(rng, h, w, blurred):
    img = rng.integers(0, 256, (h, w)).astype(np.uint8)
    if blurred:
        img = cv2.GaussianBlur(img, (5, 5), 1.2)
    return img


def _agreement(ours, ref):
    """(found, extra): share of OpenCV's edge pixels we also mark, and our extra pixels
    relative to OpenCV's count."""
    n = max(int(ref.sum()), 1)
    return float((ours & ref).sum()) / n, float((ours & ~ref).sum()) / n


@pytest.mark.parametrize("name", PHOTOS)
def test_photos_exact(name):
    rgb = _photo(name)
    ref = _reference(rgb)
    ours = _edges(_GRAY3, rgb)
    assert ref.sum() > 10000
    assert int((ours != ref).sum()) == 0
    assert _agreement(ours, ref) == (1.0, 0.0)
    np.testing.assert_array_equal(_edges(_FUSED3, rgb), ref)


def test_gray_input_and_pool_form_equal_opencv():
    rgb = _photo("chelsea")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    ref = cv2.Canny(gray, 10, 100) > 0
    np.testing.assert_array_equal(_edges(_GRAY1, gray[..., None]), ref)
    np.testing.assert_array_equal(_edges(_POOL3, rgb), ref)
    np.testing.assert_array_equal(_edges(_BITS1, gray[..., None]), ref)


@pytest.mark.parametrize("blurred", [False, True])
def test_noise_odd_sizes_exact(blurred):
    rng = np.random.default_rng(3)
    for h, w in [(3, 5), (5, 3), (4, 7), (17, 31), (64, 65), (97, 131), (200, 301)]:
        img = _noise(rng, h, w, blurred)
        ref = cv2.Canny(img, 10, 100) > 0
        for fn in (_GRAY1, _BITS1):
            mismatched = int((_edges(fn, img[..., None]) != ref).sum())
            assert mismatched == 0, f"{h}x{w}: {mismatched} pixels differ from cv2.Canny"


def test_other_thresholds_and_swapped_thresholds():
    gray = _noise(np.random.default_rng(5), 61, 83, blurred=True)
    for low, high in [(50, 150), (100, 10), (0, 0), (30.5, 70.5)]:
        ref = cv2.Canny(gray, low, high) > 0
        ours = canny(gray[None, ..., None], low, high).numpy()[0, ..., 0] > 0.5
        np.testing.assert_array_equal(ours, ref, err_msg=f"thresholds {low}, {high}")


def test_batch_exact_per_image():
    rng = np.random.default_rng(7)
    batch = np.stack([_noise(rng, 45, 77, blurred=b) for b in (True, False, True)])
    out = _GRAY1(tf.constant(batch[..., None])).numpy()
    assert out.shape == (3, 45, 77, 1) and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0}
    for i in range(3):
        np.testing.assert_array_equal(out[i, ..., 0] > 0.5, cv2.Canny(batch[i], 10, 100) > 0)


def test_float_input_rounds_and_clips_like_saturate_cast():
    rng = np.random.default_rng(11)
    x = (cv2.GaussianBlur(rng.random((50, 70, 3)).astype(np.float32), (5, 5), 1.0)
         * 320.0 - 30.0)  # out-of-range values get clipped
    as_uint8 = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    ours = canny(tf.constant(x[None])).numpy()[0, ..., 0] > 0.5
    np.testing.assert_array_equal(ours, _reference(as_uint8))
    as_f64 = canny(tf.constant(x[None].astype(np.float64))).numpy()[0, ..., 0] > 0.5
    np.testing.assert_array_equal(as_f64, ours)


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_multichannel_exact_on_photos(name):
    img = np.ascontiguousarray(_photo(name))
    ref = cv2.Canny(img, 10, 100) > 0
    assert int((_edges(_MAX3, img) != ref).sum()) == 0


def test_multichannel_ties_go_to_the_first_channel():
    """Images with many equal-magnitude channels: OpenCV keeps the lowest channel index on
    ties (strict >); a last-wins rule would differ on hundreds of these pixels."""
    rng = np.random.default_rng(1)
    a = (rng.integers(0, 4, (88, 80)) * 30).astype(np.uint8)
    images = [
        np.stack([a, np.flip(a, 1), np.flip(a, 0)], -1),
        (rng.integers(0, 3, (59, 63, 3)) * 20).astype(np.uint8),
        rng.integers(0, 256, (33, 47, 3)).astype(np.uint8),
    ]
    for img in images:
        img = np.ascontiguousarray(img)
        np.testing.assert_array_equal(_edges(_MAX3, img), cv2.Canny(img, 10, 100) > 0)


def test_bounded_steps_agreement_and_no_while_op():
    rgb = _photo("astronaut")
    ref = _reference(rgb)
    fn = tf.function(lambda x: canny(x, max_steps=32))
    x = tf.constant(rgb[None])
    ops = {op.type for op in fn.get_concrete_function(x).graph.get_operations()}
    assert not ops & {"While", "StatelessWhile"}
    bounded = fn(x).numpy()[0, ..., 0] > 0.5
    found, extra = _agreement(bounded, ref)
    assert extra == 0.0  # a bounded run only ever misses pixels
    assert found == pytest.approx(34770 / 35102)  # measured: 34770 of 35102 found
    small = _noise(np.random.default_rng(2), 40, 60, blurred=True)[None, ..., None]
    np.testing.assert_array_equal(canny(small, max_steps=40 * 60, step_form="pool"),
                                  canny(small))


def test_keras_functional_model_with_dynamic_spatial_dims(tmp_path):
    inp = keras.Input(shape=(None, None, 3), name="image")
    out = Canny(name="canny")(inp)
    model = keras.Model(inp, out)
    assert model.output_shape == (None, None, None, 1)
    rng = np.random.default_rng(4)
    for h, w in [(37, 53), (64, 48)]:
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (3, 3), 1.0)
        pred = model.predict(img[None].astype(np.float32), verbose=0)
        np.testing.assert_array_equal(pred[0, ..., 0] > 0.5, _reference(img))
    path = str(tmp_path / "canny.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.get_layer("canny").get_config()["high"] == 100.0
    np.testing.assert_array_equal(restored.predict(img[None].astype(np.float32), verbose=0),
                                  pred)


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match=r"\[B, H, W, 1 or 3\]"):
        canny(tf.zeros([1, 8, 8, 2]))
    with pytest.raises(ValueError, match="step_form 'fast'"):
        canny(tf.zeros([1, 8, 8, 1]), step_form="fast")
    with pytest.raises(ValueError, match="channels 'rgb'"):
        canny(tf.zeros([1, 8, 8, 3]), channels="rgb")
    with pytest.raises(ValueError, match="dtype int32"):
        canny(tf.zeros([1, 8, 8, 1], tf.int32))


_MASK3 = _compiled(3, step_form="mask")
_MASK1 = _compiled(1, step_form="mask")
_MASK_MAX3 = _compiled(3, step_form="mask", channels="max")


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_mask_form_exact_on_photos(name):
    """The GPU-delegate form (float masks, no boolean ops) gives cv2.Canny pixel for pixel,
    on the grey image and with the multi-channel rule."""
    rgb = np.ascontiguousarray(_photo(name))
    np.testing.assert_array_equal(_edges(_MASK3, rgb), _reference(rgb))
    np.testing.assert_array_equal(_edges(_MASK_MAX3, rgb), cv2.Canny(rgb, 10, 100) > 0)


def test_mask_form_equals_the_other_forms():
    """Noise at odd sizes, ties between channels, other thresholds and bounded steps: the
    "mask" form's map equals the existing forms' (float32 {0, 1}, same shape)."""
    rng = np.random.default_rng(8)
    for h, w in [(3, 5), (17, 31), (97, 131)]:
        for blurred in (False, True):
            img = _noise(rng, h, w, blurred)
            np.testing.assert_array_equal(_MASK1(tf.constant(img[None, ..., None])),
                                          _GRAY1(tf.constant(img[None, ..., None])))
    ties = (rng.integers(0, 3, (59, 63, 3)) * 20).astype(np.uint8)
    np.testing.assert_array_equal(_edges(_MASK_MAX3, ties), _edges(_MAX3, ties))
    gray = _noise(rng, 61, 83, blurred=True)[None, ..., None]
    for low, high in [(50, 150), (100, 10), (0, 0), (30.5, 70.5)]:
        np.testing.assert_array_equal(canny(gray, low, high, step_form="mask"),
                                      canny(gray, low, high))
    rgb = _photo("astronaut")[None]
    for steps in (1, 8, 32):
        np.testing.assert_array_equal(canny(rgb, max_steps=steps, step_form="mask"),
                                      canny(rgb, max_steps=steps, step_form="pool"))


def test_mask_form_rounds_floats_half_to_even_without_round():
    """Float input: halves go to the even neighbour and out-of-range values are clipped, as
    `saturate_cast` does, with FLOOR and masks instead of a ROUND op."""
    rng = np.random.default_rng(12)
    whole = rng.integers(-4, 260, (1, 40, 56, 3)).astype(np.float32)
    frac = rng.choice(np.float32([0.0, 0.25, 0.5, 0.75, 0.49999997, 0.50000006]), whole.shape)
    x = tf.constant(whole + frac)
    from gscnn_tf.ops.canny_masks import _round_and_clip_masks

    np.testing.assert_array_equal(_round_and_clip_masks(x), np.clip(np.rint(whole + frac), 0, 255))
    np.testing.assert_array_equal(canny(x, step_form="mask"), canny(x))
    fn = tf.function(lambda v: canny(v, max_steps=4, step_form="mask"))
    ops = {op.type for op in fn.get_concrete_function(x).graph.get_operations()}
    assert "Round" not in ops and not ops & {"Select", "SelectV2", "LogicalAnd", "While"}


def test_fused_form_equals_the_other_forms():
    """The XLA-compiled form: noise at odd sizes (batched, with the H/W-edge words of the
    bit packing), the multi-channel rule with ties, float input, other thresholds and
    bounded steps give the "bool" form's map; inside a Keras model with dynamic H, W."""
    rng = np.random.default_rng(9)
    for h, w in [(3, 5), (17, 31), (97, 131)]:
        batch = np.stack([_noise(rng, h, w, b) for b in (False, True)])[..., None]
        np.testing.assert_array_equal(_FUSED1(tf.constant(batch)), _GRAY1(tf.constant(batch)))
    ties = (rng.integers(0, 3, (59, 63, 3)) * 20).astype(np.uint8)
    np.testing.assert_array_equal(canny(ties[None], channels="max", step_form="fused"),
                                  _MAX3(tf.constant(ties[None])))
    x = rng.uniform(-30, 290, (1, 40, 56, 3)).astype(np.float32)
    np.testing.assert_array_equal(canny(x, step_form="fused"), canny(x))
    gray = _noise(rng, 61, 83, blurred=True)[None, ..., None]
    for low, high in [(100, 10), (30.5, 70.5)]:
        np.testing.assert_array_equal(canny(gray, low, high, step_form="fused"),
                                      canny(gray, low, high))
    rgb = _photo("astronaut")[None]
    np.testing.assert_array_equal(canny(rgb, max_steps=8, step_form="fused"),
                                  canny(rgb, max_steps=8, step_form="bits"))
    inp = keras.Input(shape=(None, None, 3))
    model = keras.Model(inp, Canny(step_form="fused")(inp))
    img = cv2.GaussianBlur(rng.integers(0, 256, (37, 53, 3)).astype(np.uint8), (3, 3), 1.0)
    np.testing.assert_array_equal(model.predict(img[None].astype(np.float32), verbose=0)
                                  [0, ..., 0] > 0.5, _reference(img))
