"""The gated shape stream (docs/method.md#shape-stream, the paper's figure 2).

    stem tap -> basic block (64) -> 1x1 -> 32 -> GCL 1 (gate1 tap)
             -> basic block (32) -> 1x1 -> 16 -> GCL 2 (gate2 tap)
             -> basic block (16) -> 1x1 ->  8 -> GCL 3 (gate3 tap)
             -> 1x1 -> 1 (no bias) = boundary logits

The stream runs at input resolution / `model.shape_stream_stride` (1 as in the paper; 2 or 4
to save memory). Each gate receives a 1x1 projection of its regular-stream tap to one channel,
resized bilinearly to the stream's resolution.
"""

from __future__ import annotations

from gscnn_tf.errors import ConfigError
from gscnn_tf.models.compat import is_reference
from gscnn_tf.models.layers import Conv2D, ResizeLike, basic_block, gated_conv

WIDTHS = (32, 16, 8)
STEM_WIDTH = 64


def shape_stream(image, taps, config, bn_kwargs):
    """Builds the shape stream.

    Args:
        image: the model input `[B, H, W, 3]` (its size sets the stream's resolution).
        taps: backbone taps (`stem`, `gate1`, `gate2`, `gate3`).
        config: `ModelConfig` (`shape_stream_stride`, `gate`; `compat: reference` resizes the
            gate maps with align_corners=True).

    Returns:
        (boundary logits `[B, H / s, W / s, 1]`, [alpha1, alpha2, alpha3] each
        `[B, H / s, W / s, 1]` in [0, 1]).
    """
    stride = config.shape_stream_stride
    if stride not in (1, 2, 4):
        raise ConfigError(f"model.shape_stream_stride {stride}: expected 1, 2 or 4")
    align = is_reference(config)
    x = ResizeLike(stride, align, name="shape_stem_resize")([taps["stem"], image])
    if x.shape[-1] != STEM_WIDTH:
        x = Conv2D(STEM_WIDTH, 1, use_bias=False, name="shape_stem_proj")(x)
    alphas = []
    for i, width in enumerate(WIDTHS, start=1):
        x = basic_block(x, f"shape_res{i}", bn_kwargs)
        x = Conv2D(width, 1, name=f"shape_reduce{i}")(x)
        regular = Conv2D(1, 1, name=f"gate{i}_dsn")(taps[f"gate{i}"])
        regular = ResizeLike(stride, align, name=f"gate{i}_dsn_resize")([regular, image])
        x, alpha = gated_conv(x, regular, f"gate{i}", config.gate, bn_kwargs)
        alphas.append(alpha)
    logits = Conv2D(1, 1, use_bias=False, name="shape_fuse")(x)
    return logits, alphas


def segments(model, recompute: bool) -> list:
    """The shape stream of a built `model` as `gscnn_tf.models.recompute` segments, in order:
    each residual block in two halves (its first convolution; the second with the shortcut
    and the 1x1 reduction), then its gated convolution (from the reduced features and the
    gate map). What lies between them (the stem's resize, the gate maps' 1x1 projections and
    resizes) is small and runs plainly."""
    from gscnn_tf.models.recompute import Segment

    def out(name):
        return model.get_layer(name).output

    names = {layer.name for layer in model.layers}
    x = out("shape_stem_proj" if "shape_stem_proj" in names else "shape_stem_resize")
    parts = []
    for i in range(1, len(WIDTHS) + 1):
        half = out(f"shape_res{i}_1_relu")
        parts += [
            Segment([x], half, recompute, f"the shape stream's residual block {i}"),
            Segment([x, half], out(f"shape_reduce{i}"), recompute,
                    f"the shape stream's residual block {i} (second half)"),
            Segment([out(f"shape_reduce{i}"), out(f"gate{i}_dsn_resize")],
                    out(f"gate{i}_weight"), recompute,
                    f"the shape stream's gated convolution {i}")]
        x = out(f"gate{i}_weight")
    return parts
