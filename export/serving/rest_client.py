"""REST client for a Gated-SCNN SavedModel served by TF Serving (port 8501).

Standard library and numpy only. Requests use TF Serving's row format:
`{"signature_name": ..., "instances": [...]}` with images as nested uint8 lists, or, for the
`serve_bytes` signature, encoded files as `{"b64": "<base64>"}` objects (far smaller on the
wire: send PNG/JPEG bytes for large images). Responses `{"predictions": [{"labels": ...,
"edge_prob": ...}, ...]}` become numpy arrays with the batch first.

    python export/serving/rest_client.py http://localhost:8501 street.png --bytes

    out = predict("http://localhost:8501", [open("street.png", "rb").read()],
                  signature="serve_bytes")
    out["labels"]        # int32 [B, H, W]
"""

from __future__ import annotations

import argparse
import base64
import json
import urllib.error
import urllib.request

import numpy as np

OUTPUT_DTYPES = {"labels": np.int32, "edge_prob": np.float32, "probabilities": np.float32}


def predict_url(server: str, model_name: str = "gscnn", version: int | None = None) -> str:
    """`<server>/v1/models/<name>[/versions/<v>]:predict`."""
    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "")
    return server.rstrip("/") + path + ":predict"


def build_request(inputs, signature: str = "serving_default") -> dict:
    """The JSON body. inputs: uint8 images `[B, H, W, 3]`, or a list of encoded image bytes
    for serve_bytes (sent base64-encoded as {"b64": ...})."""
    if signature == "serve_bytes":
        instances = [{"b64": base64.b64encode(data).decode("ascii")} for data in inputs]
    else:
        instances = np.asarray(inputs, np.uint8).tolist()
    return {"signature_name": signature, "instances": instances}


def parse_response(body: dict) -> dict:
    """{output name: numpy array [B, ...]} of a row-format response."""
    if "error" in body:
        raise RuntimeError(f"TF Serving error: {body['error']}")
    rows = body["predictions"]
    if rows and not isinstance(rows[0], dict):
        raise ValueError("expected one object per instance with named outputs")
    names = rows[0].keys() if rows else ()
    return {name: np.asarray([row[name] for row in rows], OUTPUT_DTYPES.get(name))
            for name in names}


def predict(server: str, inputs, model_name: str = "gscnn",
            signature: str = "serving_default", version: int | None = None,
            timeout: float = 60.0) -> dict:
    """POSTs one request; returns {"labels": int32 [B, H, W], "edge_prob": float32
    [B, H, W, 1]} (or {"probabilities", "edge_prob"})."""
    data = json.dumps(build_request(inputs, signature)).encode("utf-8")
    request = urllib.request.Request(predict_url(server, model_name, version), data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return parse_response(json.loads(response.read()))
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        raise RuntimeError(f"TF Serving answered {e.code}: {detail}") from e


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("server", help="e.g. http://localhost:8501")
    parser.add_argument("images", nargs="+", help="image files of one size")
    parser.add_argument("--model-name", default="gscnn")
    parser.add_argument("--version", type=int)
    parser.add_argument("--bytes", action="store_true",
                        help="send the encoded files (serve_bytes signature)")
    args = parser.parse_args(argv)
    if args.bytes:
        inputs, signature = [open(p, "rb").read() for p in args.images], "serve_bytes"
    else:
        import cv2

        inputs = np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
                           for p in args.images])
        signature = "serving_default"
    out = predict(args.server, inputs, args.model_name, signature, args.version)
    for path, labels in zip(args.images, out["labels"]):
        classes, counts = np.unique(labels, return_counts=True)
        print(path, {int(c): int(n) for c, n in zip(classes, counts)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
