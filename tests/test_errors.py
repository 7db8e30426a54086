"""The errors a user meets, as a catalogue: each row is a bad input, the command that meets it
and the line it must get. An error the user can fix ends the command with one line on stderr,
`gscnn-tf <command>: error: <message>` naming the file, key or value, exit code 2 and no
traceback; nothing already written is lost.

Rows run in-process through `gscnn_tf.cli.main` (the function `gscnn-tf` and `python train.py`
call); one row of every kind also runs the real command in a subprocess. Behaviours that are
not a one-line error (skipping corrupt files, resuming past a damaged checkpoint, a batch of 0
sent to the SavedModel or the TFLite helper) have their own tests below.

Held elsewhere: an interrupted run resumes to the weights of an uninterrupted one
(test_training_loop), malformed SavedModel requests (test_export, also rows here), an
existing export or .keras file is never overwritten (test_export, test_reference_import).
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from typing import Callable

import cv2
import numpy as np
import pytest
import tensorflow as tf
import yaml

import gscnn_tf
from gscnn_tf import cli, errors
from gscnn_tf.config import load_config, save_config
from gscnn_tf.training.checkpoints import RunCheckpoints, damaged_files
from gscnn_tf.training.optimizers import build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
DATA_FILE = "ckpt-4.data-00000-of-00001"


def write_folder_dataset(root, train=4, val=2, size=(SIZE, SIZE)):
    """A folder dataset of random 3-class images and masks."""
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "classes.yaml"), "w") as f:
        yaml.safe_dump({"names": ["a", "b", "c"]}, f)
    for split, count in (("train", train), ("val", val)):
        for sub in ("images", "masks"):
            os.makedirs(os.path.join(root, sub, split), exist_ok=True)
        for i in range(count):
            cv2.imwrite(os.path.join(root, "images", split, f"{i:03d}.png"),
                        rng.integers(0, 256, size + (3,), dtype=np.uint8))
            cv2.imwrite(os.path.join(root, "masks", split, f"{i:03d}.png"),
                        rng.integers(0, 3, size, dtype=np.uint8))
    return root


def run_settings(root):
    """A tiny small-backbone model on the folder dataset at `root` (a few steps)."""
    return ["data.dataset=folder", f"data.root={root}", f"data.crop_size=[{SIZE},{SIZE}]",
            "train.batch_size=2", "train.steps=4", "train.checkpoint_every=2",
            "train.val_every=0", "train.image_every=0", "train.log_every=1",
            "model.backbone.base_width=8", "model.aspp_channels=8",
            "model.decoder_channels=8", "model.skip_channels=8", "model.sync_batch_norm=false",
            "eval.tolerances=[12]", "eval.crop_factors=[0]"]


def sets(settings):
    return [arg for s in settings for arg in ("--set", s)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_folder_dataset(str(tmp_path_factory.mktemp("folder")))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_root):
    """A run directory as training leaves it: config.yaml and checkpoints ckpt-2, ckpt-4
    (model, optimizer, step; random weights)."""
    run = str(tmp_path_factory.mktemp("run") / "run")
    config = load_config(None, run_settings(data_root) + [f"train.run_dir={run}"])
    model = gscnn_tf.build_model(config.model, 3)
    optimizer = build_optimizer(config.train, model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoints = RunCheckpoints(run, {"model": model, "optimizer": optimizer, "step": step})
    save_config(config, os.path.join(run, "config.yaml"))
    for s in (2, 4):
        step.assign(s)
        checkpoints.save(s)
    return run


def damage(path, how):
    """Truncates a file to a quarter of its size, or zeroes its bytes from a quarter on (a
    smaller damage may fall on tensors that are zero already, or on the optimizer's alone,
    which inference never reads)."""
    data = bytearray(open(path, "rb").read())
    if how == "truncate":
        data = data[: len(data) // 4]
    else:
        start = len(data) // 4
        data[start:] = bytes(len(data) - start)
    with open(path, "wb") as f:
        f.write(bytes(data))


def damaged_copy(run_dir, tmp_path, how="truncate", files=(DATA_FILE,)):
    copy = str(tmp_path / "damaged_run")
    shutil.copytree(run_dir, copy)
    for name in files:
        damage(os.path.join(copy, "checkpoints", name), how)
    return copy


def image_file(tmp_path, name="street.png", shape=(SIZE, SIZE, 3), dtype=np.uint8):
    path = str(tmp_path / name)
    cv2.imwrite(path, np.random.default_rng(1).integers(0, 200, shape).astype(dtype))
    return path


def assert_one_line(rc, err, command, needles):
    """Exit code 2, no traceback, the last stderr line is the command's error naming
    every needle."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith(f"gscnn-tf {command}: error: "), err[-3000:]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def run_subprocess(args, cwd=None, env=None, script=None, timeout=180):
    """The real command: `python -m gscnn_tf.cli ARGS` (or `python SCRIPT ARGS`)."""
    command = [sys.executable, script] if script else [sys.executable, "-m", "gscnn_tf.cli"]
    environment = dict(os.environ, **(env or {}))
    environment.pop("GSCNN_TF_DEBUG", None)
    return subprocess.run(command + list(args), capture_output=True, text=True, cwd=cwd or REPO,
                          env=environment, timeout=timeout)


# ------------------------------------------------------------------------------------------
# The catalogue. `args(ctx)` makes the bad input under ctx.tmp and returns the command line;
# `expect(ctx)` the strings the error line must contain.


@dataclasses.dataclass
class Ctx:
    tmp: object
    request: object

    @property
    def data(self):
        return self.request.getfixturevalue("data_root")

    @property
    def run(self):
        return self.request.getfixturevalue("run_dir")

    @property
    def saved_model(self):
        return self.request.getfixturevalue("saved_model_dir")

    def data_copy(self, **kwargs):
        return write_folder_dataset(str(self.tmp), **kwargs)

    def file(self, name, text):
        path = str(self.tmp / name)
        with open(path, "w") as f:
            f.write(text)
        return path


@dataclasses.dataclass
class Case:
    id: str
    kind: str
    args: Callable
    expect: Callable


def _train(ctx, *more):
    return ["train", *sets(run_settings(ctx.data)), "--set",
            f"train.run_dir={ctx.tmp / 'new_run'}", *more]


def _train_on(root, ctx, *more):
    return ["train", *sets(run_settings(root)), "--set", f"train.run_dir={ctx.tmp / 'new_run'}",
            *more]


def _empty_images(ctx):
    root = ctx.data_copy()
    for name in os.listdir(os.path.join(root, "images", "train")):
        os.remove(os.path.join(root, "images", "train", name))
        os.remove(os.path.join(root, "masks", "train", name))
    return _train_on(root, ctx)


def _no_mask(ctx):
    root = ctx.data_copy()
    os.remove(os.path.join(root, "masks", "train", "001.png"))
    return _train_on(root, ctx)


def _sizes_differ(ctx):
    root = ctx.data_copy()
    for i in range(4):  # every pair: the first batch meets one (no training step first)
        cv2.imwrite(os.path.join(root, "masks", "train", f"{i:03d}.png"),
                    np.zeros((SIZE, 24), np.uint8))
    return _train_on(root, ctx)


def _corrupt_image(ctx):
    root = ctx.data_copy()
    for i in range(4):  # every image: the first batch meets one (no training step first)
        with open(os.path.join(root, "images", "train", f"{i:03d}.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n but the rest is gone")
    return _train_on(root, ctx)


def _corrupt_val_evaluate(ctx):
    root = ctx.data_copy(val=23, size=(8, 8))
    for i in range(23):
        with open(os.path.join(root, "images", "val", f"{i:03d}.png"), "wb") as f:
            f.write(b"not an image")
    return ["evaluate", ctx.run, "--set", f"data.root={root}", "--set",
            "data.skip_corrupt=true", "--output", str(ctx.tmp / "eval")]


def _corrupt_mask_evaluate(ctx):
    root = ctx.data_copy()
    with open(os.path.join(root, "masks", "val", "001.png"), "wb") as f:
        f.write(b"not a png")
    return ["evaluate", ctx.run, "--set", f"data.root={root}", "--output", str(ctx.tmp / "e")]


def _run_dir_taken(ctx):
    return ["train", *sets(run_settings(ctx.data)), "--set", f"train.run_dir={ctx.run}"]


def _export_exists(ctx):
    os.makedirs(ctx.tmp / "exports" / "gscnn" / "1")
    return ["export", ctx.run, "--output", str(ctx.tmp / "exports")]


def _python_tag(ctx):
    marker = ctx.tmp / "executed"
    return ["train", "--config", ctx.file(
        "tag.yaml", f"train:\n  steps: !!python/object/apply:os.system ['touch {marker}']\n")]


CATALOGUE = [
    # config: the file, key or value and what was expected
    Case("unknown key", "config", lambda c: ["train", "--set", "train.stepz=3"],
         lambda c: ["unknown key 'train.stepz'", "did you mean 'train.steps'"]),
    Case("wrong type", "config", lambda c: ["train", "--set", "train.steps=many"],
         lambda c: ["'train.steps'", "expected int", "'many'"]),
    Case("missing config file", "config",
         lambda c: ["train", "--config", str(c.tmp / "none.yaml")],
         lambda c: ["config file not found", "none.yaml"]),
    Case("--set value not YAML", "config", lambda c: ["train", "--set", "train.steps=[1"],
         lambda c: ["'train.steps'", "not valid YAML"]),
    Case("config file not YAML", "config",
         lambda c: ["train", "--config", c.file("bad.yaml", "train: {steps: [1\n")],
         lambda c: ["bad.yaml", "not valid YAML"]),
    Case("!!python tag is refused, not run", "config", _python_tag,
         lambda c: ["tag.yaml", "not valid YAML", "python/object/apply"]),
    Case("override without =", "config", lambda c: ["train", "--set", "train.steps"],
         lambda c: ["override 'train.steps'", "a.b=value"]),
    Case("unknown key, evaluate", "config",
         lambda c: ["evaluate", c.run, "--set", "eval.tolerance=[3]"],
         lambda c: ["unknown key 'eval.tolerance'", "eval.tolerances"]),
    Case("strategy name", "config", lambda c: _train(c, "--strategy", "mirorred"),
         lambda c: ["train.strategy 'mirorred'", "expected one of"]),
    Case("model value", "config",
         lambda c: _train(c, "--set", "model.backbone.output_stride=12"),
         lambda c: ["model.backbone.output_stride 12", "expected 8 or 16"]),
    Case("mixed precision value", "config",
         lambda c: _train(c, "--set", "train.mixed_precision=fp8"),
         lambda c: ["train.mixed_precision 'fp8'", "fp16, bf16"]),
    Case("loss value", "config", lambda c: _train(c, "--set", "loss.class_weighting=median"),
         lambda c: ["loss.class_weighting 'median'", "expected one of"]),
    Case("evaluate window", "config",
         lambda c: ["evaluate", c.run, "--window", "0", "64", "-o", str(c.tmp)],
         lambda c: ["eval.window [0, 64]", "expected [height, width]"]),
    Case("summary size", "usage", lambda c: ["summary", "--size", "big"],
         lambda c: ["--size 'big'", "expected HEIGHTxWIDTH"]),
    Case("benchmark size", "usage", lambda c: ["benchmark", "--size", "big"],
         lambda c: ["size 'big'", "HEIGHTxWIDTH"]),
    Case("gates of a SavedModel", "usage",
         lambda c: ["predict", c.saved_model, image_file(c.tmp), "--gates", "-o", str(c.tmp)],
         lambda c: ["a SavedModel does not expose the gates"]),
    # data: the file or folder and what was expected
    Case("empty image folder", "data", _empty_images,
         lambda c: [os.path.join("images", "train"), "no images"]),
    Case("image without mask", "data", _no_mask,
         lambda c: ["no mask for image", os.path.join("images", "train", "001.png")]),
    Case("image and mask sizes differ", "data", _sizes_differ,
         lambda c: ["image and label sizes differ: ", os.path.join("images", "train", "00"),
                    ".png is 32x32, ", os.path.join("masks", "train", "00"), ".png is 32x24"]),
    Case("corrupt image, no skip_corrupt", "data", _corrupt_image,
         lambda c: ["corrupt or unreadable image file: ", os.path.join("images", "train", "00"),
                    ".png (expected a PNG or JPEG image)"]),
    Case("evaluate, corrupt mask", "data", _corrupt_mask_evaluate,
         lambda c: ["corrupt or unreadable label file: ", os.path.join("masks", "val", "001.png"),
                    "(expected an 8-bit single-channel PNG)"]),
    Case("folder dataset without root", "data",
         lambda c: ["train", "--set", "data.dataset=folder"], lambda c: ["needs data.root"]),
    Case("evaluate, every image corrupt, skip_corrupt", "data", _corrupt_val_evaluate,
         lambda c: ["data.skip_corrupt: split 'val' has no valid example", "23 files"]),
    # files: models, inputs and outputs
    Case("model file missing", "files",
         lambda c: ["predict", str(c.tmp / "none.keras"), image_file(c.tmp)],
         lambda c: ["model file not found", "none.keras"]),
    Case("model path is no model", "files",
         lambda c: ["predict", str(c.tmp), image_file(c.tmp)],
         lambda c: [str(c.tmp), "not a .keras file", "a SavedModel directory"]),
    Case("truncated .keras file", "files",
         lambda c: ["predict", c.file("model.keras", "PK\x03\x04 and nothing more"),
                    image_file(c.tmp)],
         lambda c: ["model.keras", "not a readable .keras file"]),
    Case("predict on a non-image", "files",
         lambda c: ["predict", c.run, c.file("notes.png", "a text file"), "-o", str(c.tmp)],
         lambda c: ["notes.png", "not a readable image file"]),
    Case("predict input missing", "files",
         lambda c: ["predict", c.run, str(c.tmp / "gone.png")],
         lambda c: ["input not found", "gone.png"]),
    Case("run directory holds checkpoints", "files", _run_dir_taken,
         lambda c: [c.run, "already holds checkpoints", "--resume"]),
    # checkpoints: the damaged files and the intact checkpoints
    Case("predict, latest checkpoint truncated", "checkpoints",
         lambda c: ["predict", damaged_copy(c.run, c.tmp), image_file(c.tmp), "-o",
                    str(c.tmp / "out")],
         lambda c: [DATA_FILE, "cannot be read", "intact: ckpt-2", "--checkpoint"]),
    Case("evaluate, latest checkpoint zeroed", "checkpoints",
         lambda c: ["evaluate", damaged_copy(c.run, c.tmp, "zero"), "--output",
                    str(c.tmp / "eval")],
         lambda c: [DATA_FILE, "intact: ckpt-2"]),
    Case("export, latest index truncated", "checkpoints",
         lambda c: ["export", damaged_copy(c.run, c.tmp, files=("ckpt-4.index",)), "--output",
                    str(c.tmp / "exports")],
         lambda c: ["ckpt-4.index", "intact: ckpt-2"]),
    Case("checkpoint of another model", "checkpoints",
         lambda c: ["predict", c.run, image_file(c.tmp), "--set", "model.aspp_channels=16"],
         lambda c: ["ckpt-4 does not match the model built from the config",
                    "incompatible tensor with shape"]),
    Case("--checkpoint that is not there", "checkpoints",
         lambda c: ["predict", c.run, image_file(c.tmp), "--checkpoint", "7"],
         lambda c: ["--checkpoint 7", "ckpt-4, ckpt-2"]),
    Case("--checkpoint with a SavedModel", "usage",
         lambda c: ["predict", c.saved_model, image_file(c.tmp), "--checkpoint", "2"],
         lambda c: ["--checkpoint 2", "is a single model, not a run directory"]),
    Case("resume, every checkpoint damaged", "checkpoints",
         lambda c: ["train", "--resume", *sets(run_settings(c.data)), "--set",
                    f"train.run_dir={damaged_copy(c.run, c.tmp, files=(DATA_FILE, 'ckpt-2.data-00000-of-00001'))}"],  # noqa: E501
         lambda c: ["no intact checkpoint", "ckpt-4, ckpt-2"]),
    # export
    Case("export version exists", "export", _export_exists,
         lambda c: [os.path.join("exports", "gscnn", "1") + " exists", "--overwrite"]),
    Case("export size", "usage",
         lambda c: ["export", c.run, "--format", "tflite", "--size", "12", "--output",
                    str(c.tmp)],
         lambda c: ["size '12'", "HEIGHTxWIDTH"]),
    # import-reference
    Case("import-reference --out", "import-reference",
         lambda c: ["import-reference", "x.pth", "--out", str(c.tmp / "model.h5")],
         lambda c: ["model.h5", "expected a path ending in .keras"]),
    Case("import-reference checkpoint missing", "import-reference",
         lambda c: ["import-reference", str(c.tmp / "none.pth"), "--out",
                    str(c.tmp / "m.keras")],
         lambda c: ["none.pth"]),
    Case("import-reference not a checkpoint", "import-reference",
         lambda c: ["import-reference", c.file("fake.pth", "text"), "--out",
                    str(c.tmp / "m.keras")],
         lambda c: ["fake.pth", "not readable by torch.load"]),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_catalogue(case, tmp_path, request, capsys):
    ctx = Ctx(tmp_path, request)
    args = case.args(ctx)
    capsys.readouterr()
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert_one_line(rc, err, args[0], case.expect(ctx))
    if case.id.startswith("!!python"):
        assert not os.path.exists(tmp_path / "executed")
    if case.id.startswith("evaluate, every image corrupt"):  # 20 named, 3 counted
        assert err.count("gscnn_tf.data WARNING: skipping 3 more corrupt or unreadable files "
                         "of split 'val' (23 of its 23 files in all)") == 1, err
    if case.id == "export version exists":
        assert os.listdir(tmp_path / "exports" / "gscnn" / "1") == []
        assert os.listdir(tmp_path / "exports" / "gscnn") == ["1"]


# ------------------------------------------------------------------------------------------
# The real command, one row of each kind, in a subprocess.

# config: test_train_py_is_the_same_command; data: the skip_corrupt test below.
SUBPROCESS_ROWS = ["model file missing", "predict, latest checkpoint truncated",
                   "export version exists", "import-reference --out"]


@pytest.mark.parametrize("case_id", SUBPROCESS_ROWS)
def test_catalogue_in_a_subprocess(case_id, tmp_path, request):
    case = next(c for c in CATALOGUE if c.id == case_id)
    ctx = Ctx(tmp_path, request)
    # paths under tmp_path relative to the working directory, as a user types them
    args = [a.replace(f"{tmp_path}{os.sep}", "") for a in case.args(ctx)]
    result = run_subprocess(args, cwd=str(tmp_path))
    assert_one_line(result.returncode, result.stderr, args[0], case.expect(ctx))


def test_train_py_is_the_same_command(tmp_path):
    result = run_subprocess(["--set", "train.steps=[1"], script=os.path.join(REPO, "train.py"))
    assert_one_line(result.returncode, result.stderr, "train", ["'train.steps'"])


def test_debug_shows_the_traceback(monkeypatch, capsys):
    with pytest.raises(errors.ConfigError, match="train.stepz"):
        cli.main(["train", "--set", "train.stepz=3", "--debug"])
    with pytest.raises(errors.ConfigError, match="train.stepz"):
        cli.main(["--debug", "train", "--set", "train.stepz=3"])
    monkeypatch.setenv("GSCNN_TF_DEBUG", "1")
    with pytest.raises(errors.ConfigError):
        cli.main(["train", "--set", "train.stepz=3"])
    monkeypatch.setenv("GSCNN_TF_DEBUG", "0")
    assert cli.main(["train", "--set", "train.stepz=3"]) == 2


def test_internal_errors_keep_their_traceback(monkeypatch):
    from gscnn_tf.training import cli as train_cli

    def broken(args):
        raise KeyError("an internal defect")

    monkeypatch.setattr(train_cli, "run", broken)
    with pytest.raises(KeyError, match="an internal defect"):
        cli.main(["train"])
    monkeypatch.setattr(train_cli, "run", lambda args: ([] + None))
    with pytest.raises(TypeError):
        cli.main(["train"])


def test_error_classes_keep_their_builtin_bases():
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.DataError, ValueError)
    assert issubclass(errors.RunDirError, FileExistsError)
    assert issubclass(errors.ExportError, RuntimeError)
    assert issubclass(errors.NonFiniteLossError, FloatingPointError)
    assert all(issubclass(c, errors.GSCNNError) for c in (
        errors.ConfigError, errors.DataError, errors.CheckpointError, errors.RunDirError,
        errors.ExportError, errors.ReferenceImportError, errors.StrategyError,
        errors.UsageError, errors.NonFiniteLossError))
    # A plain ValueError from deep inside is a defect: no one-line treatment.
    assert cli.user_error_message(ValueError("x")) is None
    assert cli.user_error_message(errors.DataError("y")) == "y"


# ------------------------------------------------------------------------------------------
# Corrupt data with data.skip_corrupt


def test_skip_corrupt_over_an_all_corrupt_split_stops_within_seconds(tmp_path):
    """Every training image corrupt: the first 20 files named once each, the other 10
    counted, then one error line; it used to wait forever, printing the warnings again on
    every pass (82 MB in 120 s)."""
    root = write_folder_dataset(str(tmp_path / "data"), train=30, val=2, size=(8, 8))
    for i in range(30):
        with open(os.path.join(root, "images", "train", f"{i:03d}.png"), "wb") as f:
            f.write(b"corrupt")
    args = ["train", *sets(run_settings(root)), "--set", "data.skip_corrupt=true",
            "--set", f"train.run_dir={tmp_path / 'run'}"]
    start = time.perf_counter()
    result = run_subprocess(args, timeout=120)
    seconds = time.perf_counter() - start
    assert_one_line(result.returncode, result.stderr, "train",
                    ["data.skip_corrupt: split 'train' has no valid example", "30 files"])
    assert len(result.stderr.encode()) < 10_000, len(result.stderr)
    named = [i for i in range(30) if f"images/train/{i:03d}.png" in result.stderr]
    assert len(named) == 20, result.stderr
    assert all(result.stderr.count(f"images/train/{i:03d}.png") == 1 for i in named)
    assert ("skipping 10 more corrupt or unreadable files of split 'train' (30 of its 30 "
            "files in all)") in result.stderr
    assert seconds < 60, seconds  # mostly TensorFlow's import and the model build
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_skip_corrupt_warns_once_per_file_and_trains_on_the_rest(tmp_path, capfd):
    from gscnn_tf.data.pipeline import build_dataset

    root = write_folder_dataset(str(tmp_path), train=4)
    with open(os.path.join(root, "masks", "train", "001.png"), "wb") as f:
        f.write(b"corrupt")
    config = load_config(None, run_settings(root) + ["data.skip_corrupt=true"])
    batches = list(build_dataset(config, "train", True, 3).take(8))  # 24 crops, 8 passes
    assert len(batches) == 8
    err = capfd.readouterr().err
    assert err.count("skipping corrupt or unreadable label file") == 1, err
    assert os.path.join("masks", "train", "001.png") in err


def test_skip_corrupt_training_pipeline_fails_at_the_end_of_the_first_pass(tmp_path, capfd):
    from gscnn_tf.data.decode import data_error_message
    from gscnn_tf.data.pipeline import build_dataset

    root = write_folder_dataset(str(tmp_path), train=5)
    for i in range(5):
        with open(os.path.join(root, "images", "train", f"{i:03d}.png"), "wb") as f:
            f.write(b"corrupt")
    config = load_config(None, run_settings(root) + ["data.skip_corrupt=true"])
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        next(iter(build_dataset(config, "train", True, 2)))
    assert time.perf_counter() - start < 10
    assert "split 'train' has no valid example in a whole pass over its 5 files" in \
        data_error_message(raised.value)
    assert capfd.readouterr().err.count("skipping corrupt or unreadable image file") == 5


def test_skip_corrupt_validation_split_all_corrupt(tmp_path, capfd):
    from gscnn_tf.data.decode import data_error_message
    from gscnn_tf.data.pipeline import build_dataset

    root = write_folder_dataset(str(tmp_path), val=3)
    for i in range(3):
        with open(os.path.join(root, "images", "val", f"{i:03d}.png"), "wb") as f:
            f.write(b"corrupt")
    config = load_config(None, run_settings(root) + ["data.skip_corrupt=true"])
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(build_dataset(config, "val", False, 2))
    assert data_error_message(raised.value) == (
        "data.skip_corrupt: split 'val' has no valid example in a whole pass over its 3 files: "
        "every one was skipped as corrupt or unreadable (see the warnings naming them)")
    assert capfd.readouterr().err.count("skipping corrupt") == 3


# ------------------------------------------------------------------------------------------
# Damaged checkpoints


def _toy_trainer(root, run_dir, *overrides):
    from gscnn_tf.training.trainer import Trainer
    from training_support import tiny_config, toy_model

    return Trainer(tiny_config(root, run_dir, *overrides), model_builder=toy_model)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy_synthetic"))


@pytest.fixture(scope="module")
def uninterrupted(toy_root, tmp_path_factory):
    """The toy model's weights after 8 uninterrupted steps."""
    straight = _toy_trainer(toy_root, tmp_path_factory.mktemp("straight"), "train.steps=8")
    straight.train()
    return [w.numpy() for w in straight.model.weights]


@pytest.mark.parametrize("how", ["truncate", "zero"])
def test_resume_past_a_damaged_latest_checkpoint(toy_root, uninterrupted, tmp_path, capfd,
                                                 monkeypatch, how):
    """A run stopped after its step-6 checkpoint, which is then damaged: --resume warns
    naming its data file, resumes from step 4 and ends with the weights of an uninterrupted
    run."""
    root = toy_root
    run = tmp_path / "b"
    crashing = _toy_trainer(root, run, "train.steps=8")
    save = crashing.checkpoints.save

    def save_then_crash(step):
        save(step)
        if step == 6:
            raise KeyboardInterrupt("stopped after the step-6 checkpoint")

    monkeypatch.setattr(crashing.checkpoints, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    data_file = str(run / "checkpoints" / "ckpt-6.data-00000-of-00001")
    damage(data_file, how)
    capfd.readouterr()
    resumed = _toy_trainer(root, run, "train.steps=8")
    assert resumed.checkpoints.restore_latest() == 4
    err = capfd.readouterr().err
    assert f"checkpoint {run / 'checkpoints' / 'ckpt-6'} is damaged: {data_file} cannot be read" \
        in err, err
    assert "resuming from" in err and "ckpt-4 (step 4)" in err
    resumed.train(resume=True)
    assert int(resumed.step.numpy()) == 8
    for a, b in zip(uninterrupted, resumed.model.weights):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-6, err_msg=b.name)
    assert damaged_files(str(run / "checkpoints" / "ckpt-6")) == []  # saved again


def test_checkpoint_option_picks_an_intact_checkpoint(run_dir, tmp_path, capsys):
    damaged = damaged_copy(run_dir, tmp_path)
    image = image_file(tmp_path)
    for choice in ("2", "ckpt-2", os.path.join(damaged, "checkpoints", "ckpt-2")):
        out = tmp_path / f"out_{os.path.basename(choice)}"
        assert cli.main(["predict", damaged, image, "-o", str(out), "--checkpoint",
                         choice]) == 0
        assert sorted(os.listdir(out)) == ["street_edges.png", "street_labels.png",
                                           "street_overlay.png"]


@pytest.mark.slow
def test_cli_resume_past_a_truncated_checkpoint(run_dir, tmp_path, capfd):
    """`gscnn-tf train --resume` on a run whose latest checkpoint is truncated (slow: the
    real model's training step)."""
    damaged = damaged_copy(run_dir, tmp_path)
    args = ["train", "--resume", "--config", os.path.join(damaged, "config.yaml"), "--set",
            f"train.run_dir={damaged}", "--set", "train.steps=6"]
    assert cli.main(args) == 0
    captured = capfd.readouterr()
    assert f"{DATA_FILE} cannot be read" in captured.err
    assert "done: step 6" in captured.out


# ------------------------------------------------------------------------------------------
# Serving: a batch of 0


@pytest.fixture(scope="module")
def saved_model_dir(run_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("exports"))
    assert cli.main(["export", run_dir, "--output", out]) == 0
    return os.path.join(out, "gscnn", "1")


@pytest.fixture(scope="module")
def saved_model(saved_model_dir):
    return tf.saved_model.load(saved_model_dir)


def test_saved_model_batch_of_zero_returns_empty_outputs(saved_model):
    empty = tf.zeros([0, SIZE, 48, 3], tf.uint8)
    out = saved_model.signatures["serving_default"](images=empty)
    assert out["labels"].shape == (0, SIZE, 48) and out["labels"].dtype == tf.int32
    assert out["edge_prob"].shape == (0, SIZE, 48, 1)
    out = saved_model.signatures["probabilities"](images=empty)
    assert out["probabilities"].shape == (0, SIZE, 48, 3)
    one = saved_model.signatures["serving_default"](images=tf.zeros([1, SIZE, 48, 3], tf.uint8))
    assert one["labels"].shape == (1, SIZE, 48)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one encoded image"):
        saved_model.signatures["serve_bytes"](image_bytes=tf.zeros([0], tf.string))


@pytest.mark.parametrize("images, message", [
    (tf.zeros([1, 8, 8], tf.uint8), "must be uint8 \\[batch, height, width, 3\\]"),
    (tf.zeros([1, 8, 8, 4], tf.uint8), "must be uint8 \\[batch, height, width, 3\\]"),
    (tf.zeros([1, 0, 8, 3], tf.uint8), "height and width must be >= 1"),
])
def test_saved_model_malformed_requests_name_the_rule(saved_model, images, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        saved_model.signatures["serving_default"](images=images)


def test_tflite_helpers_batch_of_zero_and_empty_image(tmp_path):
    import importlib.util

    from gscnn_tf import export
    from training_support import toy_model

    config = load_config(None, [])
    model = toy_model(config.model, 3)
    content = export.convert_tflite(export.frozen_function(model, 16, 24))
    out = export.run_tflite(content, np.zeros([0, 16, 24, 3], np.uint8))
    assert out["labels"].shape == (0, 16, 24) and out["labels"].dtype == np.int32
    assert out["edge_prob"].shape == (0, 16, 24, 1)
    assert export.run_tflite(content, np.zeros([2, 16, 24, 3], np.uint8))["labels"].shape == \
        (2, 16, 24)
    spec = importlib.util.spec_from_file_location(
        "tflite_predict", os.path.join(REPO, "export", "tflite_predict.py"))
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    path = tmp_path / "m.tflite"
    path.write_bytes(content)
    runner = helper.load(str(path))
    with pytest.raises(ValueError, match=r"expected uint8 RGB \[H, W, 3\] with H, W >= 1"):
        helper.predict(runner, np.zeros([0, 24, 3], np.uint8))
    assert helper.predict(runner, np.zeros([20, 30, 3], np.uint8))["labels"].shape == (20, 30)


# ------------------------------------------------------------------------------------------
# Inputs that already work and must keep working


@pytest.mark.parametrize("name, shape, dtype", [
    ("grey.png", (SIZE, SIZE), np.uint8),
    ("rgba.png", (SIZE, SIZE, 4), np.uint8),
    ("deep.png", (SIZE, SIZE, 3), np.uint16),
])
def test_grey_rgba_and_16_bit_images_predict(run_dir, tmp_path, capsys, name, shape, dtype):
    path = image_file(tmp_path, name, shape, dtype)
    assert cli.main(["predict", run_dir, path, "-o", str(tmp_path / "out")]) == 0
    labels = cv2.imread(str(tmp_path / "out" / name.replace(".png", "_labels.png")),
                        cv2.IMREAD_UNCHANGED)
    assert labels.shape == (SIZE, SIZE)
