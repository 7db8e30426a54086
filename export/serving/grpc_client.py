"""gRPC client for a Gated-SCNN SavedModel served by TF Serving (port 8500).

Needs only `grpcio`, `tensorflow-serving-api` and `numpy` (the protos' TensorProto helpers come
from `tensorflow`, which tensorflow-serving-api depends on); not the gscnn_tf package.

    python export/serving/grpc_client.py localhost:8500 street.png --model-name gscnn
    python export/serving/grpc_client.py localhost:8500 street.png --bytes   # serve_bytes

    stub = connect("localhost:8500")
    out = predict(stub, images)                          # uint8 [B, H, W, 3]
    out = predict(stub, [png_bytes], signature="serve_bytes")
    out["labels"]                                        # int32 [B, H, W]
"""

from __future__ import annotations

import argparse

import numpy as np


def connect(target: str, max_message_mb: int = 256):
    """A `PredictionServiceStub` on `host:port` (messages up to `max_message_mb`, since a
    1024x2048 image and its outputs exceed gRPC's 4 MB default)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    size = max_message_mb * 2**20
    channel = grpc.insecure_channel(target, options=[
        ("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)])
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def build_request(inputs, model_name: str = "gscnn", signature: str = "serving_default",
                  version: int | None = None):
    """A `PredictRequest`. inputs: uint8 images `[B, H, W, 3]` for serving_default and
    probabilities, or a list of encoded image bytes for serve_bytes."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if signature == "serve_bytes":
        request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto(list(inputs), dtype=tf.string))
    else:
        request.inputs["images"].CopyFrom(
            tf.make_tensor_proto(np.asarray(inputs, np.uint8), dtype=tf.uint8))
    return request


def parse_response(response) -> dict:
    """{output name: numpy array} of a `PredictResponse`."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def predict(stub, inputs, model_name: str = "gscnn", signature: str = "serving_default",
            version: int | None = None, timeout: float = 60.0) -> dict:
    """Runs one request; returns {"labels": int32 [B, H, W], "edge_prob": float32
    [B, H, W, 1]} (or {"probabilities", "edge_prob"} for the probabilities signature)."""
    request = build_request(inputs, model_name, signature, version)
    return parse_response(stub.Predict(request, timeout=timeout))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", help="host:port of TF Serving's gRPC API")
    parser.add_argument("images", nargs="+", help="image files of one size")
    parser.add_argument("--model-name", default="gscnn")
    parser.add_argument("--version", type=int)
    parser.add_argument("--bytes", action="store_true",
                        help="send the encoded files (serve_bytes signature)")
    parser.add_argument("--output", help="write the labels as <output> (.npy)")
    args = parser.parse_args(argv)
    if args.bytes:
        inputs, signature = [open(p, "rb").read() for p in args.images], "serve_bytes"
    else:
        import cv2

        inputs = np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
                           for p in args.images])
        signature = "serving_default"
    out = predict(connect(args.target), inputs, args.model_name, signature, args.version)
    for path, labels in zip(args.images, out["labels"]):
        classes, counts = np.unique(labels, return_counts=True)
        print(path, {int(c): int(n) for c, n in zip(classes, counts)})
    if args.output:
        np.save(args.output, out["labels"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
