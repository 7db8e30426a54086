"""Contract tests of the TF Serving request and response formats for export/serving/'s clients.

No TF Serving server can be installed here, so the server side is a stand-in: an in-process
loopback gRPC `PredictionServiceServicer` and a loopback HTTP handler for TF Serving's REST
row format, both backed by `tf.saved_model.load` of a real export. They check what TF Serving
checks (model name, signature, input names and dtypes) and answer in its formats; they test
the clients' messages, not TF Serving itself. The labels must equal the Keras model's.
"""

import base64
import http.server
import importlib.util
import json
import os
import re
import threading
from concurrent import futures

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from gscnn_tf import export
from export_support import heldout, keras_outputs

SERVING = os.path.join(os.path.dirname(__file__), "..", "export", "serving")


def _client(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SERVING, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


grpc_client, rest_client = _client("grpc_client"), _client("rest_client")


class SavedModelBackend:
    """What TF Serving does with one request: find the signature, check input names and
    dtypes, run it. Errors are (status, message)."""

    def __init__(self, path, name, version):
        self.loaded, self.name, self.version = tf.saved_model.load(path), name, version

    def signature(self, name, version, signature_name):
        if name != self.name or version not in (None, self.version):
            raise LookupError(f"Servable not found for request: {name} version {version}")
        fn = self.loaded.signatures.get(signature_name or "serving_default")
        if fn is None:
            raise KeyError(f"Serving signature name: \"{signature_name}\" not found")
        return fn

    def run(self, fn, inputs):
        specs = fn.structured_input_signature[1]
        for key, value in inputs.items():
            if key not in specs:
                raise ValueError(f"input '{key}' not in the signature ({', '.join(specs)})")
            if tf.as_dtype(value.dtype) != specs[key].dtype:
                raise ValueError(f"Expects arg[{key}] to be {specs[key].dtype.name} but "
                                 f"{tf.as_dtype(value.dtype).name} is provided")
        try:
            return {k: v.numpy() for k, v in fn(**inputs).items()}
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(e.message) from e


class LoopbackPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """gRPC PredictionService.Predict stand-in (contract test only)."""

    def __init__(self, backend):
        self.backend = backend

    def Predict(self, request, context):
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            fn = self.backend.signature(spec.name, version, spec.signature_name)
        except (LookupError, KeyError) as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        try:
            out = self.backend.run(fn, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = self.backend.version
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for key, value in out.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response


def _rest_handler(backend):
    class Handler(http.server.BaseHTTPRequestHandler):
        """TF Serving REST `:predict` stand-in, row format (contract test only)."""

        def do_POST(self):
            match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", self.path)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                if not match:
                    raise LookupError(f"bad path {self.path}")
                version = int(match[2]) if match[2] else None
                fn = backend.signature(match[1], version, body.get("signature_name"))
                (key, spec), = fn.structured_input_signature[1].items()
                values = body["instances"]
                if spec.dtype == tf.string:
                    value = np.array([base64.b64decode(v["b64"]) for v in values], object)
                else:
                    value = np.asarray(values, spec.dtype.as_numpy_dtype)
                out = backend.run(fn, {key: value})
                rows = [{k: v[i].tolist() for k, v in out.items()} for i in range(len(values))]
                self._answer(200, {"predictions": rows})
            except (LookupError, KeyError, ValueError) as e:
                self._answer(400, {"error": str(e)})

        def _answer(self, code, payload):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture(scope="module")
def setup(tiny_run, tmp_path_factory):
    config, model, _ = tiny_run
    path = export.export_saved_model(model, str(tmp_path_factory.mktemp("serving")), "gscnn",
                                     5, export.class_metadata(config, 10))
    images = heldout(config)
    pngs = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes()
            for im in images]
    return SavedModelBackend(path, "gscnn", 5), images, pngs, keras_outputs(model, images)


@pytest.fixture(scope="module")
def grpc_stub(setup):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        LoopbackPredictionService(setup[0]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield grpc_client.connect(f"127.0.0.1:{port}")
    server.stop(None)


@pytest.fixture(scope="module")
def rest_server(setup):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(setup[0]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_grpc_client_returns_the_keras_labels(setup, grpc_stub):
    _, images, pngs, (labels, edge_prob) = setup
    out = grpc_client.predict(grpc_stub, images, "gscnn", version=5)
    np.testing.assert_array_equal(out["labels"], labels)
    assert out["labels"].dtype == np.int32
    np.testing.assert_allclose(out["edge_prob"], edge_prob, atol=1e-5)
    out = grpc_client.predict(grpc_stub, pngs, signature="serve_bytes")
    np.testing.assert_array_equal(out["labels"], labels)
    out = grpc_client.predict(grpc_stub, images[:1], signature="probabilities")
    np.testing.assert_array_equal(out["probabilities"].argmax(-1), labels[:1])


def test_grpc_request_format(setup):
    _, images, pngs, _ = setup
    request = grpc_client.build_request(images, "city", version=3)
    assert request.model_spec.name == "city" and request.model_spec.version.value == 3
    assert request.model_spec.signature_name == "serving_default"
    proto = request.inputs["images"]
    assert proto.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in proto.tensor_shape.dim] == list(images.shape)
    request = grpc_client.build_request(pngs, signature="serve_bytes")
    proto = request.inputs["image_bytes"]
    assert proto.dtype == tf.string.as_datatype_enum and list(proto.string_val) == pngs


def test_grpc_errors_are_invalid_argument(setup, grpc_stub):
    _, images, _, _ = setup
    request = grpc_client.build_request(images)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images.astype(np.float32)))
    with pytest.raises(grpc.RpcError) as error:
        grpc_stub.Predict(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "to be uint8 but float32 is provided" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        grpc_client.predict(grpc_stub, images[0])  # no batch axis
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be uint8 [batch, height, width, 3]" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        grpc_client.predict(grpc_stub, images, model_name="other")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_rest_request_format(setup):
    _, images, pngs, _ = setup
    body = rest_client.build_request(images[:2])
    assert body["signature_name"] == "serving_default"
    np.testing.assert_array_equal(np.array(body["instances"], np.uint8), images[:2])
    body = json.loads(json.dumps(rest_client.build_request(pngs, "serve_bytes")))
    assert [base64.b64decode(i["b64"]) for i in body["instances"]] == pngs
    assert rest_client.predict_url("http://h:8501/", "m", 4) == \
        "http://h:8501/v1/models/m/versions/4:predict"
    parsed = rest_client.parse_response(
        {"predictions": [{"labels": [[1, 2]], "edge_prob": [[[0.5], [0.25]]]}]})
    assert parsed["labels"].dtype == np.int32 and parsed["labels"].shape == (1, 1, 2)
    assert parsed["edge_prob"].shape == (1, 1, 2, 1)


def test_rest_client_returns_the_keras_labels(setup, rest_server):
    _, images, pngs, (labels, edge_prob) = setup
    out = rest_client.predict(rest_server, images[:2], "gscnn")
    np.testing.assert_array_equal(out["labels"], labels[:2])
    np.testing.assert_allclose(out["edge_prob"], edge_prob[:2], atol=1e-5)
    out = rest_client.predict(rest_server, pngs, signature="serve_bytes", version=5)
    np.testing.assert_array_equal(out["labels"], labels)
    with pytest.raises(RuntimeError, match="400.*must be uint8"):
        rest_client.predict(rest_server, images[0])


def test_model_server_config_parses():
    with open(os.path.join(SERVING, "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "gscnn", "/models/gscnn", "tensorflow")
