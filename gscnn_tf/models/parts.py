"""The model's naming contract: the layer names by which code outside the graph builder finds
the parts of a GSCNN (or of the DeepLab v3+ baseline), declared once.

`gate_model` reads the gate activations, `summary.parameter_breakdown` sorts weights into
backbone / shape stream / fusion+decoder by name prefix, and `part_graphs` cuts the forward
pass at the boundary layers below (the speed benchmark times each part). tests/test_model.py
checks every name here against built models, so renaming a layer in the builder fails a test
instead of silently breaking a summary.
"""

from __future__ import annotations

# Gate activations alpha [B, h, w, 1] in [0, 1] of the shape stream's three GCLs.
GATE_ALPHAS = ("gate1_alpha", "gate2_alpha", "gate3_alpha")
# Every layer of the shape stream (the gates' dsn projections of the regular-stream taps
# included) and of the boundary fusion starts with one of these; no backbone layer does.
SHAPE_STREAM_PREFIXES = ("shape_", "gate", "fusion_")
# Every layer of ASPP and the DeepLab v3+ decoder.
FUSION_DECODER_PREFIXES = ("aspp_", "decoder_")

# Boundary layers of `part_graphs`.
BACKBONE_OUT = "aspp_1x1_conv"          # its input: the backbone's `out` tap
DECODER_SKIP = "decoder_skip_proj"      # its input: the backbone's `skip` tap
DECODER_ASPP = "decoder_aspp_proj"      # its input: the ASPP output
SEG_LOGITS = "seg_logits"               # output: seg logits [B, H, W, classes]
SHAPE_STEM = "shape_stem_resize"        # its first input: the backbone's `stem` tap
GATE_DSNS = ("gate1_dsn", "gate2_dsn", "gate3_dsn")  # their inputs: the gate taps
SHAPE_OUTPUT = "shape_output_resize"    # output: boundary logits at input size
CANNY = "canny"                         # output: Canny edges [B, H, W, 1]


def part_of(layer_name: str) -> str:
    """"shape_stream", "fusion_decoder" or "backbone": the part a layer of the model is in."""
    if layer_name.startswith(SHAPE_STREAM_PREFIXES):
        return "shape_stream"
    if layer_name.startswith(FUSION_DECODER_PREFIXES):
        return "fusion_decoder"
    return "backbone"


def _tensor(model, layer, kind="output", index=None):
    value = getattr(model.get_layer(layer), kind)
    return value[index] if index is not None else value


def part_graphs(model):
    """{part: (inputs, outputs)} KerasTensors of `model` splitting its forward pass into
    backbone, shape stream, Canny, fusion + ASPP (ASPP for the baseline) and decoder; each
    part's inputs are the image or outputs of the parts before it."""
    image = model.input
    out = _tensor(model, BACKBONE_OUT, "input")
    skip = _tensor(model, DECODER_SKIP, "input")
    aspp_out = _tensor(model, DECODER_ASPP, "input")
    seg = _tensor(model, SEG_LOGITS)
    if any(layer.name == SHAPE_OUTPUT for layer in model.layers):
        stem = _tensor(model, SHAPE_STEM, "input", 0)
        gates = [_tensor(model, name, "input") for name in GATE_DSNS]
        edge = _tensor(model, SHAPE_OUTPUT)
        canny = _tensor(model, CANNY)
        parts = {"backbone": ([image], [out, skip, stem, *gates]),
                 "shape_stream": ([image, stem, *gates], [edge]),
                 "canny": ([image], [canny]),
                 "fusion_aspp": ([out, edge, canny], [aspp_out])}
    else:
        parts = {"backbone": ([image], [out, skip]), "aspp": ([out], [aspp_out])}
    parts["decoder"] = ([aspp_out, skip, image], [seg])
    return parts
