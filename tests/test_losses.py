"""Loss terms against independent numpy/scipy computations of docs/method.md#losses."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from gscnn_tf import losses
from gscnn_tf.config import LossConfig
from conftest import op_count, two_cpu_strategy

C = 4


# ---- independent numpy references (float64) ----

def np_pixel_weights(labels, valid, weighting, class_weights=None):
    if weighting == "none":
        return valid.astype(np.float64)
    if weighting == "fixed":
        return np.where(valid, np.asarray(class_weights)[np.where(valid, labels, 0)], 0.0)
    weights = np.zeros(labels.shape)
    for b in range(labels.shape[0]):
        present = labels[b][valid[b]]
        for c in range(C):
            f = np.mean(present == c) if present.size else 0.0
            weights[b][valid[b] & (labels[b] == c)] = 1 + (1 - f) if f > 0 else 1.0
    return weights


def np_seg(logits, labels, weighting="none", class_weights=None, valid=None):
    logits = logits.astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = (labels != 255) if valid is None else valid
    ce = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    w = np_pixel_weights(labels, valid, weighting, class_weights)
    return (w * ce).sum() / w.sum() if w.sum() > 0 else 0.0


def np_att(logits, edge_logits, labels, threshold=0.8, weighting="none", class_weights=None):
    prob = 1.0 / (1.0 + np.exp(-edge_logits[..., 0].astype(np.float64)))
    return np_seg(logits, labels, weighting, class_weights, (labels != 255) & (prob > threshold))


def np_edge(edge_logits, edges):
    p = 1.0 / (1.0 + np.exp(-edge_logits[..., 0].astype(np.float64)))
    bce = -(edges * np.log(p) + (1 - edges) * np.log(1 - p))
    n, n_pos = edges.size, edges.sum()
    w = np.where(edges == 1, (n - n_pos) / n, n_pos / n)
    return (w * bce).sum() / n


def np_potential(maps, sigma):
    out = np.zeros(maps.shape)
    for b in range(maps.shape[0]):
        for k in range(maps.shape[-1]):
            g = ndimage.gaussian_filter(maps[b, ..., k], sigma, mode="nearest",
                                        radius=int(np.ceil(3 * sigma)))
            dx = ndimage.sobel(g, axis=1, mode="nearest")
            dy = ndimage.sobel(g, axis=0, mode="nearest")
            out[b, ..., k] = np.hypot(dx, dy) / np.sqrt(2)
    return out


def np_dual(logits, labels, tau=1.0, sigma=1.0):
    z = logits.astype(np.float64) / tau
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    valid = (labels != 255)[..., None]
    onehot = (np.arange(C) == labels[..., None]) & valid
    zeta, zeta_hat = np_potential(probs * valid, sigma), np_potential(onehot * 1.0, sigma)
    support = (zeta > 1e-5) | (zeta_hat > 1e-5)
    return np.abs(zeta - zeta_hat)[support].mean() if support.any() else 0.0


# ---- inputs ----

def block_labels(rng, batch=2, height=24, width=28):
    """Piecewise-constant maps (a few rectangles of classes) with an ignore patch."""
    labels = np.zeros((batch, height, width), np.int32)
    for b in range(batch):
        for _ in range(5):
            y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
            labels[b, y:y + rng.integers(4, 12), x:x + rng.integers(4, 12)] = rng.integers(C)
        labels[b, -4:, :5] = 255
    return labels


def random_inputs(rng, batch=2, height=24, width=28):
    labels = block_labels(rng, batch, height, width)
    seg = rng.normal(0, 2, (batch, height, width, C)).astype(np.float32)
    edge = rng.normal(0, 2, (batch, height, width, 1)).astype(np.float32)
    edges = (rng.random((batch, height, width)) < 0.3).astype(np.float32)
    return seg, edge, labels, edges


def as_dicts(seg, edge, labels, edges):
    return ({"labels": tf.constant(labels), "edges": tf.constant(edges)},
            {"seg_logits": tf.constant(seg), "edge_logits": tf.constant(edge)})


def confident(labels, scale=40.0):
    logits = scale * (np.arange(C) == np.where(labels == 255, 0, labels)[..., None])
    return logits.astype(np.float32)


# ---- terms against numpy ----

@pytest.mark.parametrize("weighting", ["none", "image", "fixed"])
def test_segmentation_and_attention_match_numpy(rng, weighting):
    seg, edge, labels, _ = random_inputs(rng)
    cw = [0.5, 1.0, 2.0, 3.0]
    got = losses.segmentation_loss(seg, labels, weighting, cw)
    np.testing.assert_allclose(got.numpy(), np_seg(seg, labels, weighting, cw), rtol=1e-5)
    got = losses.attention_loss(seg, edge, labels, 0.8, weighting, cw)
    np.testing.assert_allclose(got.numpy(), np_att(seg, edge, labels, 0.8, weighting, cw),
                               rtol=1e-5)


def test_edge_loss_matches_numpy(rng):
    _, edge, _, edges = random_inputs(rng)
    np.testing.assert_allclose(losses.edge_loss(edge, edges).numpy(), np_edge(edge, edges),
                               rtol=1e-5)


@pytest.mark.parametrize("tau, sigma", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.7)])
def test_dual_loss_matches_numpy(rng, tau, sigma):
    seg, _, labels, _ = random_inputs(rng)
    got = losses.dual_task_loss(seg, labels, tau=tau, sigma=sigma)
    np.testing.assert_allclose(got.numpy(), np_dual(seg, labels, tau, sigma), rtol=1e-5)


def test_dual_support_is_the_same_with_xla(rng):
    """Constant regions leave backend-dependent rounding noise, below the non-zero threshold."""
    labels = block_labels(rng)
    for logits in (confident(labels, 5.0), rng.normal(size=(2, 24, 28, C)).astype(np.float32)):
        eager = losses.dual_task_loss(logits, labels)
        xla = tf.function(losses.dual_task_loss, jit_compile=True)(logits, labels)
        np.testing.assert_allclose(xla.numpy(), eager.numpy(), rtol=1e-4)


def test_total_is_the_weighted_sum(rng):
    seg, edge, labels, edges = random_inputs(rng)
    config = LossConfig(class_weighting="image", lambda_edge=20.0, lambda_att=0.5)
    terms = losses.GSCNNLoss(config)(*as_dicts(seg, edge, labels, edges))
    expected = {"seg": np_seg(seg, labels, "image"), "edge": np_edge(edge, edges),
                "att": np_att(seg, edge, labels, 0.8, "image"), "dual": np_dual(seg, labels)}
    expected["total"] = (expected["seg"] + 20.0 * expected["edge"] + 0.5 * expected["att"]
                         + expected["dual"])
    assert set(terms) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(terms[key].numpy(), value, rtol=1e-5, err_msg=key)


# ---- behaviour ----

def test_perfect_confident_prediction_is_near_zero(rng):
    labels = block_labels(rng)
    edges = np.stack([np.asarray(ndimage.morphological_gradient(m, size=3) > 0, np.float32)
                      for m in labels])
    edge = np.where(edges > 0, 20.0, -20.0)[..., None].astype(np.float32)
    terms = losses.GSCNNLoss()(*as_dicts(confident(labels), edge, labels, edges))
    assert edges.any() and float(terms["att"]) == pytest.approx(0.0, abs=1e-6)
    for key in ("seg", "att", "dual", "edge"):
        assert 0.0 <= float(terms[key]) < 1e-6, key
    wrong = losses.GSCNNLoss()(*as_dicts(-confident(labels), edge, labels, edges))
    assert float(wrong["seg"]) > 10 and float(wrong["dual"]) > 0.05


def test_one_pixel_shift_raises_dual(rng):
    labels = block_labels(rng)
    valid_pred = np.where(labels == 255, 0, labels)
    exact = losses.dual_task_loss(confident(labels), labels).numpy()
    for axis in (1, 2):
        shifted = confident(np.roll(valid_pred, 1, axis=axis))
        assert losses.dual_task_loss(shifted, labels).numpy() > exact + 1e-2


def test_ignore_pixels_change_nothing(rng):
    seg, edge, labels, edges = random_inputs(rng)
    ignore = labels == 255
    loss_fn = losses.GSCNNLoss(LossConfig(class_weighting="image"))
    base = loss_fn(*as_dicts(seg, edge, labels, edges))
    seg2 = np.where(ignore[..., None], rng.normal(0, 5, seg.shape), seg).astype(np.float32)
    edge2 = np.where(ignore[..., None], 10.0, edge).astype(np.float32)
    changed = loss_fn(*as_dicts(seg2, edge2, labels, edges))
    # An extra all-ignore example with no edges: the label-based terms stay the same.
    extra = [np.concatenate([a, b[:1]]) for a, b in zip(
        (seg, edge, labels, edges),
        (rng.normal(size=seg.shape), edge, np.full_like(labels, 255), np.zeros_like(edges)))]
    padded = loss_fn(*as_dicts(extra[0].astype(np.float32), *extra[1:]))
    for key in ("seg", "att", "dual"):
        np.testing.assert_allclose(changed[key].numpy(), base[key].numpy(), rtol=1e-6)
        np.testing.assert_allclose(padded[key].numpy(), base[key].numpy(), rtol=1e-6)


def test_gradients_reach_both_heads(rng):
    seg, edge, labels, edges = random_inputs(rng)
    targets, outputs = as_dicts(seg, edge, labels, edges)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(outputs)
        terms = losses.GSCNNLoss()(targets, outputs, seed=[3, 4])
    total = tape.gradient(terms["total"], outputs)
    for key in ("seg_logits", "edge_logits"):
        grad = total[key].numpy()
        assert np.isfinite(grad).all() and np.abs(grad).sum() > 0, key
    # the attention mask carries no gradient to the edge head
    att = tape.gradient(terms["att"], outputs)
    assert att["edge_logits"] is None or not np.any(att["edge_logits"].numpy())
    assert np.abs(tape.gradient(terms["dual"], outputs["seg_logits"]).numpy()).sum() > 0


@pytest.mark.parametrize("case", ["all_ignore", "no_edges", "all_edges", "single_class",
                                  "batch_1"])
def test_degenerate_batches_stay_finite(rng, case):
    seg, edge, labels, edges = random_inputs(rng)
    if case == "all_ignore":
        labels = np.full_like(labels, 255)
    elif case == "no_edges":
        edges = np.zeros_like(edges)
    elif case == "all_edges":
        edges = np.ones_like(edges)
    elif case == "single_class":
        labels = np.zeros_like(labels)
    else:
        seg, edge, labels, edges = seg[:1], edge[:1], labels[:1], edges[:1]
    targets, outputs = as_dicts(seg, edge, labels, edges)
    with tf.GradientTape() as tape:
        tape.watch(outputs)
        terms = losses.GSCNNLoss(LossConfig(class_weighting="image"))(targets, outputs,
                                                                        seed=[1, 2])
    grads = tape.gradient(terms["total"], outputs)
    for value in list(terms.values()) + list(grads.values()):
        assert np.isfinite(value.numpy()).all(), case
    if case == "all_ignore":
        assert float(terms["seg"]) == float(terms["att"]) == float(terms["dual"]) == 0.0
    if case in ("no_edges", "all_edges"):
        assert float(terms["edge"]) == 0.0


def test_mixed_precision_logits_are_computed_in_float32(rng):
    seg, edge, labels, edges = random_inputs(rng)
    seg16, edge16 = seg.astype(np.float16), edge.astype(np.float16)
    loss_fn = losses.GSCNNLoss()
    half = loss_fn(*as_dicts(seg16, edge16, labels, edges))
    full = loss_fn(*as_dicts(seg16.astype(np.float32), edge16.astype(np.float32), labels, edges))
    for key, value in half.items():
        assert value.dtype == tf.float32
        np.testing.assert_allclose(value.numpy(), full[key].numpy(), rtol=1e-6, err_msg=key)


def test_gumbel_softmax_modes(rng):
    logits = tf.constant(np.tile([0.0, 1.0], (1, 200, 250, 1)), tf.float32)
    np.testing.assert_allclose(losses.gumbel_softmax(logits, 2.0).numpy(),
                               np.broadcast_to(np.exp([0, 0.5]) / np.exp([0, 0.5]).sum(),
                                               logits.shape), rtol=1e-6)
    a = losses.gumbel_softmax(logits, 1.0, seed=[5, 6]).numpy()
    np.testing.assert_array_equal(a, losses.gumbel_softmax(logits, 1.0, seed=[5, 6]).numpy())
    assert not np.array_equal(a, losses.gumbel_softmax(logits, 1.0, seed=[5, 7]).numpy())
    # Gumbel-max: the noisy argmax follows softmax(logits): P(class 1) = e / (1 + e)
    assert np.mean(a.argmax(-1)) == pytest.approx(np.e / (1 + np.e), abs=0.01)
    # per-example noise: example b of a batch equals the same example at offset b (to float
    # rounding: the softmax of a [2, ...] and a [1, ...] tensor may take different vector
    # paths, 6e-8 apart was seen; other noise would differ by ~1e-1)
    pair = tf.concat([logits, logits], 0)
    both = losses.gumbel_softmax(pair, 1.0, seed=[5, 6]).numpy()
    np.testing.assert_allclose(both[0], a[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        both[1], losses.gumbel_softmax(logits, 1.0, seed=[5, 6], example_offset=1).numpy()[0],
        rtol=0, atol=1e-6)
    assert np.abs(both[1] - a[0]).max() > 0.1


@pytest.mark.parametrize("seed, recompute", [(None, False), ((7, 8), False), ((7, 8), True)])
def test_two_replicas_sum_to_the_single_device_loss_and_gradient(rng, seed, recompute):
    seg, edge, labels, edges = random_inputs(rng, batch=4, height=16, width=20)
    edges[:2] = 0.0  # replicas see different edge balances
    loss_fn = losses.GSCNNLoss(LossConfig(class_weighting="image", recompute_dual=recompute))

    def step(targets, outputs):
        with tf.GradientTape() as tape:
            tape.watch(outputs)
            terms = loss_fn(targets, outputs, seed=seed)
        return terms, tape.gradient(terms["total"], outputs)

    targets, outputs = as_dicts(seg, edge, labels, edges)
    single_terms, single_grads = tf.function(step)(targets, outputs)

    strategy = two_cpu_strategy()
    assert strategy.num_replicas_in_sync == 2

    def shard(context):
        k = context.replica_id_in_sync_group
        return tf.nest.map_structure(lambda t: t[2 * k:2 * k + 2], (targets, outputs))

    inputs = strategy.experimental_distribute_values_from_function(shard)
    terms, grads = tf.function(lambda x: strategy.run(step, args=x))(inputs)
    for key, value in single_terms.items():
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, terms[key], axis=None)
        np.testing.assert_allclose(total.numpy(), value.numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    for key, value in single_grads.items():
        joined = np.concatenate([g.numpy() for g in strategy.experimental_local_results(
            grads[key])])
        np.testing.assert_allclose(joined, value.numpy(), rtol=1e-4, atol=1e-8, err_msg=key)


@pytest.mark.parametrize("field, value, message", [
    ("class_weighting", "batch", "class_weighting"),
    ("dual_tau", 0.0, "dual_tau"),
    ("attention_threshold", 1.5, "attention_threshold"),
])
def test_bad_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        losses.GSCNNLoss(LossConfig(**{field: value}))


def test_bad_inputs_are_named(rng):
    seg, edge, labels, edges = random_inputs(rng)
    targets, outputs = as_dicts(seg, edge, labels, edges)
    with pytest.raises(ValueError, match="edges"):
        losses.GSCNNLoss()({"labels": targets["labels"]}, outputs)
    with pytest.raises(ValueError, match="class_weights has 2 values"):
        losses.GSCNNLoss(LossConfig(class_weighting="fixed", class_weights=[1.0, 2.0]))(
            targets, outputs)
    with pytest.raises(ValueError, match="labels shape"):
        losses.segmentation_loss(seg, labels[:, :-1])
    with pytest.raises(ValueError, match="edge_logits shape"):
        losses.edge_loss(edge[..., 0], edges)
    with pytest.raises(ValueError, match="does not match labels"):
        losses.GSCNNLoss()(targets, {**outputs, "edge_logits": outputs["edge_logits"][:, 1:]})


# ---- frozen values: the loss must not move when its implementation is made faster ----

# GSCNNLoss terms and gradient L1 norms on `_frozen_batch`, computed with the straightforward
# implementation (per-example Gumbel map_fn, Gaussian then Sobel depthwise convolutions on
# every class at full resolution) before it was reshaped for speed.
FROZEN = {
    ("none", None): dict(seg=3.065139055252075, edge=0.49302834272384644,
                         att=3.103618621826172, dual=0.32729142904281616,
                         total=16.35661506652832, grad_seg_l1=3.3522050380706787,
                         grad_edge_l1=4.63166618347168),
    ("none", (3, 7)): dict(seg=3.065139055252075, edge=0.49302834272384644,
                           att=3.103618621826172, dual=0.34279781579971313,
                           total=16.372121810913086, grad_seg_l1=3.3604896068573,
                           grad_edge_l1=4.63166618347168),
    ("image", None): dict(seg=3.0620152950286865, edge=0.49302834272384644,
                          att=3.096214532852173, dual=0.32729142904281616,
                          total=16.346088409423828, grad_seg_l1=3.3492255210876465,
                          grad_edge_l1=4.63166618347168),
    ("image", (3, 7)): dict(seg=3.0620152950286865, edge=0.49302834272384644,
                            att=3.096214532852173, dual=0.34279781579971313,
                            total=16.361595153808594, grad_seg_l1=3.357358694076538,
                            grad_edge_l1=4.63166618347168),
}


def _frozen_batch():
    """3 examples of 40x56 with 6 classes: rectangles of classes, an ignore patch, normal
    logits (numpy's generator, seed 19); edges from `label_edges`."""
    from gscnn_tf.data.edges import label_edges

    rng = np.random.default_rng(19)
    b, h, w, c = 3, 40, 56, 6
    labels = np.zeros((b, h, w), np.int32)
    for i in range(b):
        for _ in range(6):
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            labels[i, y:y + rng.integers(6, 20), x:x + rng.integers(6, 20)] = rng.integers(c)
        labels[i, -5:, :7] = 255
    seg = rng.normal(0, 2, (b, h, w, c)).astype(np.float32)
    edge = rng.normal(0, 2, (b, h, w, 1)).astype(np.float32)
    targets = {"labels": tf.constant(labels), "edges": label_edges(tf.constant(labels))}
    return targets, tf.constant(seg), tf.constant(edge)


@pytest.mark.parametrize("weighting, seed", list(FROZEN))
@pytest.mark.parametrize("compiled", [False, True])
def test_loss_values_are_frozen(weighting, seed, compiled):
    """Every term (with and without the Gumbel noise, both weightings) and the gradients'
    size equal the frozen numbers to 1e-5, eagerly and under tf.function."""
    targets, seg, edge = _frozen_batch()
    loss_fn = losses.GSCNNLoss(LossConfig(class_weighting=weighting))

    def run(seg, edge):
        with tf.GradientTape() as tape:
            tape.watch([seg, edge])
            terms = loss_fn(targets, {"seg_logits": seg, "edge_logits": edge}, seed=seed)
        grad_seg, grad_edge = tape.gradient(terms["total"], [seg, edge])
        return {**terms, "grad_seg_l1": tf.reduce_sum(tf.abs(grad_seg)),
                "grad_edge_l1": tf.reduce_sum(tf.abs(grad_edge))}

    values = (tf.function(run) if compiled else run)(seg, edge)
    for key, expected in FROZEN[(weighting, seed)].items():
        np.testing.assert_allclose(float(values[key]), expected, rtol=1e-5, atol=1e-6,
                                   err_msg=key)


def test_zero_weighted_terms_are_reported_without_a_gradient():
    """The DeepLab v3+ configs weight edge, att and dual 0: their values are still reported
    (the frozen numbers), the total is the segmentation term, and no gradient flows through
    the others (the edge logits get none, the class logits exactly the seg term's)."""
    targets, seg, edge = _frozen_batch()
    config = LossConfig(lambda_edge=0.0, lambda_att=0.0, lambda_dual=0.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([seg, edge])
        terms = losses.GSCNNLoss(config)(targets, {"seg_logits": seg, "edge_logits": edge},
                                         seed=(3, 7))
        alone = losses.segmentation_loss(seg, targets["labels"])
    for key in ("seg", "edge", "att", "dual"):
        np.testing.assert_allclose(float(terms[key]), FROZEN[("none", (3, 7))][key],
                                   rtol=1e-5, err_msg=key)
    assert float(terms["total"]) == float(terms["seg"])
    assert tape.gradient(terms["total"], edge) is None
    np.testing.assert_array_equal(tape.gradient(terms["total"], seg),
                                  tape.gradient(alone, seg))


@pytest.mark.parametrize("seed", [None, (3, 7)])
def test_recomputed_dual_term_equals_the_kept_one(seed):
    """loss.recompute_dual: the frozen values and the kept term's gradients (the Gumbel noise
    is stateless), and the traced gradient really evaluates the term again: twice the
    Gaussian and Sobel depthwise convolutions (without recomputation, the same count would
    show once)."""
    targets, seg, edge = _frozen_batch()
    results = []
    for recompute in (False, True):
        loss_fn = losses.GSCNNLoss(LossConfig(recompute_dual=recompute))

        @tf.function
        def run(seg, edge, loss_fn=loss_fn):
            with tf.GradientTape() as tape:
                tape.watch([seg, edge])
                terms = loss_fn(targets, {"seg_logits": seg, "edge_logits": edge}, seed=seed)
            return terms, tape.gradient(terms["total"], [seg, edge])

        terms, grads = run(seg, edge)
        results.append(({k: float(v) for k, v in terms.items()}, [g.numpy() for g in grads],
                        op_count(run.get_concrete_function(seg, edge), "DepthwiseConv2dNative")))
    (kept, kept_grads, kept_convs), (again, again_grads, again_convs) = results
    frozen = FROZEN[("none", seed)]
    for key in ("seg", "edge", "att", "dual"):
        np.testing.assert_allclose(again[key], frozen[key], rtol=1e-5, atol=1e-6, err_msg=key)
        assert again[key] == kept[key], key
    for a, b in zip(kept_grads, again_grads):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)
    assert np.abs(kept_grads[0]).max() > 0
    assert kept_convs > 0 and again_convs == 2 * kept_convs
