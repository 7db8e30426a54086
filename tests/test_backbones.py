"""Backbones: tap channels and strides, dilation, weight transfer from keras.applications files,
PyTorch-style padding of WideResNet-38 and its parameter count."""

import math

import keras
import numpy as np
import pytest

from gscnn_tf.config import BackboneConfig, ModelConfig
from gscnn_tf.models.backbones import TAPS, build_backbone, preprocessing_mode
from gscnn_tf.models.backbones import mobilenet, pretrained, wider_resnet
from gscnn_tf.models.gscnn import build_model

H, W = 35, 41  # odd on purpose: every tap must be ceil(n / stride)

# name -> {tap: (channels, stride at OS 8, stride at OS 16)}
EXPECTED = {
    "resnet50": {"stem": (64, 2, 2), "skip": (256, 4, 4), "gate1": (256, 4, 4),
                 "gate2": (512, 8, 8), "gate3": (2048, 8, 16), "out": (2048, 8, 16)},
    "mobilenetv2": {"stem": (16, 2, 2), "skip": (8, 4, 4), "gate1": (8, 4, 4),
                    "gate2": (16, 8, 8), "gate3": (112, 8, 16), "out": (112, 8, 16)},
    "wrn38": {"stem": (64, 1, 1), "skip": (128, 2, 2), "gate1": (256, 4, 4),
              "gate2": (512, 8, 8), "gate3": (4096, 8, 16), "out": (4096, 8, 16)},
}
EXPECTED["resnet101"] = EXPECTED["resnet50"]


def _backbone(config, bn_kwargs=None):
    image = keras.Input((None, None, 3), name="image")
    taps = build_backbone(config, image, bn_kwargs)
    return keras.Model(image, taps)


def _randomise(model, seed):
    """Distinct random values in every variable (variances positive)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "mobilenetv2", "wrn38"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_tap_channels_and_strides(name, output_stride):
    config = BackboneConfig(name=name, output_stride=output_stride, width_multiplier=0.35)
    taps = _backbone(config)(np.random.default_rng(0).normal(size=(1, H, W, 3)))
    assert set(taps) == set(TAPS)
    for tap, (channels, os8, os16) in EXPECTED[name].items():
        stride = os8 if output_stride == 8 else os16
        assert tuple(taps[tap].shape) == (1, math.ceil(H / stride), math.ceil(W / stride),
                                          channels), (name, tap)
        assert np.all(np.isfinite(taps[tap]))


def test_resnet101_has_23_blocks_in_conv4():
    model = _backbone(BackboneConfig(name="resnet101"))
    names = {layer.name for layer in model.layers}
    assert "conv4_block23_out" in names and "conv4_block24_out" not in names
    assert model.get_layer("conv5_block1_2_conv").dilation_rate == (4, 4)
    assert model.get_layer("conv4_block23_2_conv").dilation_rate == (2, 2)


def test_mobilenet_width_multiplier_channels():
    for alpha in (0.5, 1.0, 1.4):
        model = _backbone(BackboneConfig(name="mobilenetv2", width_multiplier=alpha))
        taps = model(np.zeros((1, 32, 32, 3), "float32"))
        widths = {tap: taps[tap].shape[-1] for tap in ("stem", "skip", "gate2", "out")}
        assert widths == {"stem": mobilenet.make_divisible(32 * alpha),
                          "skip": mobilenet.make_divisible(int(24 * alpha)),
                          "gate2": mobilenet.make_divisible(int(32 * alpha)),
                          "out": mobilenet.make_divisible(int(320 * alpha))}, alpha


def test_mobilenet_layout_follows_deeplab_dilation():
    assert mobilenet.block_layout(16)[13:] == [(1, 1), (1, 2), (1, 2), (1, 2)]
    os8 = mobilenet.block_layout(8)
    assert os8[6] == (1, 1) and os8[7:13] == [(1, 2)] * 6
    assert os8[13] == (1, 2) and os8[14:] == [(1, 4)] * 3
    assert mobilenet.make_divisible(32 * 0.35) == 16
    assert mobilenet.make_divisible(1280 * 1.4) == 1792


def test_preprocessing_modes():
    modes = {name: preprocessing_mode(BackboneConfig(name=name))
             for name in ("resnet50", "resnet101", "mobilenetv2", "wrn38")}
    assert modes == {"resnet50": "caffe", "resnet101": "caffe", "mobilenetv2": "tf",
                     "wrn38": "torch"}
    with pytest.raises(ValueError, match="model.backbone.name 'vgg'"):
        preprocessing_mode(BackboneConfig(name="vgg"))


def _assert_transferred(model, source, skipped=()):
    """Every weighted layer of `model` holds exactly its namesake's weights in `source`."""
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    theirs = {layer.name for layer in source.layers if layer.weights}
    assert set(ours) == theirs - set(skipped)
    for name, layer in ours.items():
        for a, b in zip(layer.get_weights(), source.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_resnet50_weights_from_local_file(tmp_path):
    source = keras.applications.ResNet50(include_top=False, weights=None,
                                         input_shape=(None, None, 3))
    _randomise(source, 1)
    path = str(tmp_path / "resnet50_notop.weights.h5")
    source.save_weights(path)
    image = np.random.default_rng(2).normal(size=(1, 69, 45, 3)).astype("float32")
    theirs = source(image).numpy()
    assert theirs.shape == (1, 3, 2, 2048)
    for output_stride in (16, 8):
        model = _backbone(BackboneConfig(name="resnet50", output_stride=output_stride,
                                         weights=path))
        _assert_transferred(model, source)
        # Dilation instead of stride: keras.applications' (OS-32) conv5_x is our conv5_x at
        # every (32 / OS)-th pixel, exactly, for any input size.
        step = 32 // output_stride
        ours = model(image)["out"].numpy()[:, ::step, ::step]
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5", ".keras"])
def test_mobilenet_weights_from_local_file(tmp_path, suffix):
    source = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                            input_shape=(None, None, 3))
    _randomise(source, 3)
    path = str(tmp_path / f"mobilenet_v2_0.35_notop{suffix}")
    if suffix == ".weights.h5":
        source.save_weights(path)
    else:
        source.save(path)  # ".h5": the legacy HDF5 layout of keras.applications' downloads
    # keras.applications pads its strided depthwise convs like "same" only when it knows the
    # input size, so the reference here has a fixed input shape (odd at every stride).
    fixed = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                           input_shape=(35, 37, 3))
    fixed.set_weights(source.get_weights())
    image = np.random.default_rng(4).normal(size=(2, 35, 37, 3)).astype("float32")
    theirs = keras.Model(fixed.input, fixed.get_layer("block_16_project_BN").output)(image)
    for output_stride in (16, 8):
        model = _backbone(BackboneConfig(name="mobilenetv2", output_stride=output_stride,
                                         width_multiplier=0.35, weights=path))
        _assert_transferred(model, source, skipped=("Conv_1", "Conv_1_bn"))
        # Dilation instead of stride: the OS-32 features are ours at every (32 / OS)-th pixel.
        step = 32 // output_stride
        ours = model(image)["out"].numpy()[:, ::step, ::step]
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_imagenet_weights_come_from_keras_applications(monkeypatch):
    """The 'imagenet' route, offline: keras.applications.MobileNetV2 is replaced by a stand-in
    that checks the arguments and returns a randomised model."""
    real = keras.applications.MobileNetV2
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        model = real(**{**kwargs, "weights": None})
        _randomise(model, 7)
        fake.model = model
        return model

    monkeypatch.setattr(keras.applications, "MobileNetV2", fake)
    model = _backbone(BackboneConfig(name="mobilenetv2", width_multiplier=0.5,
                                     weights="imagenet"))
    assert calls == [{"include_top": False, "weights": "imagenet", "alpha": 0.5,
                      "input_shape": (224, 224, 3)}]
    _assert_transferred(model, fake.model, skipped=("Conv_1", "Conv_1_bn"))

    def offline(**kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(ValueError, match="'imagenet'.*MobileNetV2.*URL fetch failure"):
        _backbone(BackboneConfig(name="mobilenetv2", weights="imagenet"))


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weight_file_errors(tmp_path):
    other = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.5,
                                           input_shape=(None, None, 3))
    wrong = str(tmp_path / "alpha05.weights.h5")
    other.save_weights(wrong)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    for path in (wrong, str(junk), str(tmp_path / "missing.h5")):
        config = BackboneConfig(name="mobilenetv2", width_multiplier=0.35, weights=path)
        with pytest.raises(ValueError, match=f"model.backbone.weights '{path}'"):
            _backbone(config)
    with pytest.raises(ValueError, match="wrn38 has no keras.applications weights"):
        _backbone(BackboneConfig(name="wrn38", weights=wrong))


def test_weight_copy_names_layer_and_shapes():
    model = _backbone(BackboneConfig(name="mobilenetv2", width_multiplier=0.35))
    other = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.5,
                                           input_shape=(None, None, 3))
    with pytest.raises(ValueError, match=r"'block_1_project'.*\(1, 1, 48, 8\).*\(1, 1, 48, 16\)"):
        pretrained.copy_weights_by_name(other, model.layers, "MobileNetV2(alpha=0.5)")
    resnet = _backbone(BackboneConfig(name="resnet50"))
    with pytest.raises(ValueError, match="'conv1_conv' has no layer of that name"):
        pretrained.copy_weights_by_name(other, resnet.layers, "MobileNetV2(alpha=0.5)")


def _torch_max_pool(x):
    """PyTorch MaxPool2d(3, stride=2, padding=1) on [H, W, C]: pads with -inf."""
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    out_h, out_w = (x.shape[0] - 1) // 2 + 1, (x.shape[1] - 1) // 2 + 1
    return np.array([[padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
                      for j in range(out_w)] for i in range(out_h)])


def _torch_conv3x3_s2(x, kernel):
    """PyTorch Conv2d(3x3, stride=2, padding=1, bias=False): [H, W, Cin], [3, 3, Cin, Cout]."""
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out_h, out_w = (x.shape[0] - 1) // 2 + 1, (x.shape[1] - 1) // 2 + 1
    return np.array([[np.einsum("hwc,hwco->o", padded[2 * i:2 * i + 3, 2 * j:2 * j + 3], kernel)
                      for j in range(out_w)] for i in range(out_h)])


@pytest.mark.parametrize("size", [(12, 10), (13, 11)])
def test_wrn_pool_and_strided_conv_pad_like_pytorch(size):
    x = np.random.default_rng(5).normal(size=(1, *size, 4)).astype("float32") - 3.0
    inputs = keras.Input((None, None, 4))
    pooled = keras.Model(inputs, wider_resnet._max_pool(inputs, "pool"))(x)
    np.testing.assert_array_equal(pooled[0], _torch_max_pool(x[0]))
    conv_model = keras.Model(inputs, wider_resnet._conv(inputs, 5, 3, 2, 1, "conv"))
    kernel = conv_model.get_layer("conv").kernel.numpy()
    np.testing.assert_allclose(conv_model(x)[0], _torch_conv3x3_s2(x[0], kernel),
                               rtol=1e-5, atol=1e-5)


def _reference_wrn38_params():
    """Trunk parameters from the layout in docs/method.md#regular-stream-taps: bias-free convs
    plus 4 BN values a channel."""
    modules = [(3, (128, 128)), (3, (256, 256)), (6, (512, 512)), (3, (512, 1024)),
               (1, (512, 1024, 2048)), (1, (1024, 2048, 4096))]
    total, channels = 3 * 64 * 9, 64
    for blocks, widths in modules:
        kernels = (3, 3) if len(widths) == 2 else (1, 3, 1)
        for block in range(blocks):
            inputs = [channels, *widths[:-1]]
            total += sum(i * o * k * k for i, o, k in zip(inputs, widths, kernels))
            total += 4 * sum(inputs)
            if block == 0:
                total += channels * widths[-1]
            channels = widths[-1]
    return total


def test_wrn38_structure_and_parameter_count():
    config = BackboneConfig(name="wrn38", dropout=True)
    model = _backbone(config, {"epsilon": 1e-5, "momentum": 0.9})
    assert model.count_params() == _reference_wrn38_params()
    assert all(layer.epsilon == 1e-5 and layer.momentum == 0.9 for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    image = np.random.default_rng(6).normal(size=(1, 19, 17, 3)).astype("float32")
    mod7 = keras.Model(model.input, model.get_layer("mod7_block1_add").output)
    np.testing.assert_array_equal(model(image)["out"], mod7(image))  # no BN after mod7
    drops = {layer.name: layer.rate for layer in model.layers
             if isinstance(layer, keras.layers.SpatialDropout2D)}
    assert drops == {"mod6_block1_dropout": 0.3, "mod7_block1_dropout": 0.5}
    dilations = {name: model.get_layer(name).dilation_rate for name in
                 ("mod4_block6_conv2", "mod5_block3_conv2", "mod6_block1_conv2",
                  "mod7_block1_conv2")}
    assert dilations == {"mod4_block6_conv2": (1, 1), "mod5_block3_conv2": (2, 2),
                         "mod6_block1_conv2": (4, 4), "mod7_block1_conv2": (4, 4)}
    assert model.get_layer("mod4_block1_conv1").strides == (2, 2)
    assert model.get_layer("mod2_block1_proj").kernel.shape == (1, 1, 64, 128)
    assert "mod2_block2_proj" not in {layer.name for layer in model.layers}
    no_drop = _backbone(BackboneConfig(name="wrn38", dropout=False))
    assert not any(isinstance(layer, keras.layers.SpatialDropout2D) for layer in no_drop.layers)


def test_full_wrn38_gscnn_parameter_count():
    model = build_model(ModelConfig(backbone=BackboneConfig(name="wrn38")), 19)
    assert abs(model.count_params() / 137.28e6 - 1) < 0.01, model.count_params()

    def count(prefixes):
        return sum(layer.count_params() for layer in model.layers
                   if layer.name.startswith(prefixes))

    assert count("mod") == _reference_wrn38_params()
    # The model's naming contract: the shape stream is every shape_*, gate* and fusion_* layer.
    shape_stream = count(("shape_", "gate", "fusion_"))
    assert abs(shape_stream / 0.108e6 - 1) < 0.02, shape_stream
    baseline = build_model(ModelConfig(backbone=BackboneConfig(name="wrn38"),
                                       shape_stream=False), 19)
    assert not any(layer.name.startswith(("shape_", "gate", "fusion_"))
                   for layer in baseline.layers)
    extra = model.count_params() - baseline.count_params()
    # docs/method.md#shape-stream: with ASPP's edge branch and the wider decoder input ~0.17 M.
    assert 0.15e6 < extra < 0.19e6, extra
