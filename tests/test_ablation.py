"""benchmarks.ablation's own logic: the variants' configs, the protocol at 128 px, the run
order, aggregation over seeds, the written table / JSON / plot, and resuming. No training."""

import json
import math
import os

import numpy as np
import pytest

from gscnn_tf.evaluation import metrics

from benchmarks import ablation

CLASSES = ("road", "sidewalk", "building", "vegetation", "terrain", "sky", "pole", "wire",
           "sign", "person")
BUDGET = ablation.budget_overrides(150, 4, 50, "/tmp/ablation-data")


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config(variant, seed=0):
    return _flat(ablation.run_config(variant, seed, BUDGET, "runs/x").to_dict())


def _differences(a, b):
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


@pytest.mark.parametrize("variant,expected", [
    ("baseline", {"model.shape_stream": (True, False), "loss.lambda_edge": (20.0, 0.0),
                  "loss.lambda_att": (1.0, 0.0), "loss.lambda_dual": (1.0, 0.0)}),
    ("no_dual", {"loss.lambda_dual": (1.0, 0.0)}),
    ("no_canny", {"model.image_gradients": ("canny", "none")}),
    ("stride2", {"model.shape_stream_stride": (1, 2)}),
    ("stride4", {"model.shape_stream_stride": (1, 4)}),
])
def test_each_variant_changes_only_its_own_setting(variant, expected):
    assert _differences(_config("gscnn"), _config(variant)) == expected


def test_every_run_shares_budget_protocol_and_base_config():
    config = _config("gscnn")
    assert config["train.steps"] == 150 and config["train.batch_size"] == 4
    assert config["train.warmup_steps"] == 7 and config["train.val_every"] == 0
    assert config["data.synthetic.num_val"] == 50 and config["data.root"] == "/tmp/ablation-data"
    assert config["data.deterministic"] is True
    assert config["model.backbone.name"] == "small"
    assert config["model.aspp_channels"] == 64  # configs/synthetic.yaml still applies
    # ... except its stride-2 shape stream: the study's GSCNN is the paper's full resolution
    assert config["model.shape_stream_stride"] == 1
    assert _config("stride2")["model.shape_stream_stride"] == 2
    assert config["model.shape_stream"] and config["loss.lambda_dual"] == 1.0
    assert config["model.image_gradients"] == "canny"
    # seeds differ in the seeds only (model init / dropout and augmentation)
    assert _differences(_config("gscnn", 0), _config("gscnn", 2)) == {
        "train.seed": (0, 2), "data.seed": (0, 2)}
    with pytest.raises(ValueError, match="unknown variant 'gsccn'.*baseline"):
        ablation.run_overrides("gsccn", 0, BUDGET, "runs/x")


def test_protocol_is_scaled_to_the_128_pixel_images():
    config = ablation.run_config("gscnn", 0, BUDGET, "runs/x")
    ev = config.eval
    assert ev.reference_height == config.data.synthetic.height == 128
    # the evaluator's radius for a 128-row label is the tolerance itself
    assert [metrics.scaled_tolerance(t, 128, ev.reference_height)
            for t in ev.tolerances] == ev.tolerances == [1, 2, 3, 5]
    # the paper's 3/5/9/12 px at 1024 rows would collapse to 1, 1, 1, 2 px here
    assert [metrics.scaled_tolerance(t, 128, 1024) for t in (3, 5, 9, 12)] == [1, 1, 1, 2]
    # crop margins are the paper's 0..400 px of 1024 rows scaled to 128 rows
    margins = [metrics.crop_margin(128, f, ev.reference_height) for f in ev.crop_factors]
    assert margins == [metrics.crop_margin(128, f, 1024) for f in (0, 100, 200, 300, 400)]
    assert margins == [0, 12, 25, 38, 50]
    assert metrics.center_crop(np.zeros((128, 128)), max(margins)).shape == (28, 28)


def test_schedule_runs_the_main_comparison_first():
    order = ablation.schedule(3, 2)
    assert order == [("gscnn", 0), ("baseline", 0), ("gscnn", 1), ("baseline", 1),
                     ("gscnn", 2), ("baseline", 2), ("no_dual", 0), ("no_canny", 0),
                     ("stride2", 0), ("stride4", 0),
                     ("no_dual", 1), ("no_canny", 1), ("no_dual", 2), ("no_canny", 2),
                     ("stride2", 1), ("stride4", 1)]
    assert len(ablation.schedule(3, 1)) == 4 * 3 + 2
    assert ablation.schedule(1, 0) == [(v, 0) for v in ablation.MAIN_VARIANTS]


def test_recompute_batch_norm_averages_training_batch_statistics():
    import keras
    import tensorflow as tf

    inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="bn1")])
    x = keras.Input((3,))
    model = keras.Model(x, keras.layers.BatchNormalization(name="bn2")(inner(x) * 2.0 + 1.0))
    assert sorted(l.name for l in ablation.batch_norm_layers(model)) == ["bn1", "bn2"]
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0 * i, 1.0 + i, (16, 3)).astype(np.float32) for i in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices((np.stack(batches), np.zeros(3))).repeat()
    assert ablation.recompute_batch_norm(model, dataset, 3) == 3
    bn1 = inner.get_layer("bn1")
    np.testing.assert_allclose(bn1.moving_mean.numpy(),
                               np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(),
                               np.mean([b.var(0) for b in batches], 0), rtol=1e-4)
    assert bn1.momentum == 0.99 and model.get_layer("bn2").momentum == 0.99
    assert not np.allclose(model.get_layer("bn2").moving_variance.numpy(), 1.0)


def _result(variant, seed, miou_shift=0.0, stream=True):
    """A result.json as run_one writes it (JSON keys are strings)."""
    iou = {c: 0.5 + 0.02 * i + miou_shift for i, c in enumerate(CLASSES)}
    iou["sign"] = float("nan")  # a class absent from the split
    tols = ("1", "2", "3", "5")
    present = {t: {c: 0.1 * (k + 1) + miou_shift for c in CLASSES} for k, t in enumerate(tols)}
    result = {"variant": variant, "seed": seed, "seconds_per_step": 2.0 + seed,
              "final_train_terms": {"seg": 0.5, "edge": 0.1, "att": 0.0, "dual": 0.2},
              "eval": {"miou": float(np.nanmean(list(iou.values()))), "iou": iou,
                       "pixel_accuracy": 0.9,
                       "boundary_f": {t: 0.2 * (k + 1) + miou_shift for k, t in enumerate(tols)},
                       "boundary_f_present": {t: 0.1 * (k + 1) for k, t in enumerate(tols)},
                       "boundary_f_present_per_class": present,
                       "crop_factor_miou": {f: 0.6 - 0.01 * int(f) + miou_shift
                                            for f in ("0", "12", "25", "38", "50")}}}
    if stream:
        result["shape_stream"] = {"edge_prob_on_boundary": 0.6, "edge_prob_off_boundary": 0.1,
                                  "gate_mean": {"gate1": 0.4, "gate2": 0.8}}
    return result


def test_run_metrics_splits_thin_classes():
    m = ablation.run_metrics(_result("gscnn", 0))
    assert m["miou_thin"] == pytest.approx((0.62 + 0.64) / 2)  # pole, wire
    others = [0.5 + 0.02 * i for i in (0, 1, 2, 3, 4, 5, 9)]  # sign is NaN
    assert m["miou_other"] == pytest.approx(np.mean(others))
    assert m["boundary_f/2"] == pytest.approx(0.4)
    assert m["boundary_f_present_thin/5"] == pytest.approx(0.4)
    assert m["crop_factor_miou/50"] == pytest.approx(0.1)
    assert m["gate_mean/gate2"] == 0.8 and m["final_loss/dual"] == 0.2
    assert "edge_prob_on_boundary" not in ablation.run_metrics(
        _result("baseline", 0, stream=False))


def test_mean_std_over_seeds():
    stat = ablation.mean_std([0.5, 0.6, 0.8, float("nan")])
    assert stat["n"] == 3 and stat["values"] == [0.5, 0.6, 0.8]
    assert stat["mean"] == pytest.approx(np.mean([0.5, 0.6, 0.8]))
    assert stat["std"] == pytest.approx(np.std([0.5, 0.6, 0.8], ddof=1))
    assert ablation.mean_std([0.3])["std"] == 0.0
    assert ablation.mean_std([]) ["n"] == 0 and math.isnan(ablation.mean_std([])["mean"])


def test_aggregate_means_and_spreads_per_variant():
    results = {"gscnn": [_result("gscnn", s, 0.01 * s) for s in (0, 1, 2)],
               "baseline": [_result("baseline", s, -0.02 * s, stream=False) for s in (0, 1)]}
    table = ablation.aggregate(results)
    expected = [ablation.run_metrics(r)["miou"] for r in results["gscnn"]]
    assert table["gscnn"]["miou"]["mean"] == pytest.approx(np.mean(expected))
    assert table["gscnn"]["miou"]["std"] == pytest.approx(np.std(expected, ddof=1))
    assert table["gscnn"]["miou"]["std"] == pytest.approx(0.01)
    assert table["baseline"]["boundary_f/1"]["mean"] == pytest.approx(0.2 - 0.01)
    assert table["baseline"]["seeds"] == [0, 1]
    assert "edge_prob_on_boundary" not in table["baseline"]
    assert table["gscnn"]["seconds_per_step"]["mean"] == pytest.approx(3.0)


def _write_runs(runs_root, variants):
    for variant, seeds in variants.items():
        for seed in seeds:
            folder = os.path.join(runs_root, variant, f"seed{seed}")
            os.makedirs(folder)
            with open(os.path.join(folder, ablation.RESULT), "w") as f:
                json.dump(_result(variant, seed, 0.01 * seed, variant != "baseline"), f)


def test_report_writes_json_markdown_and_plot(tmp_path):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "results")
    _write_runs(runs, {"gscnn": (0, 1, 2), "baseline": (0, 1, 2), "stride4": (0,)})
    os.makedirs(os.path.join(runs, "no_dual", "seed0"))  # unfinished: no result.json
    meta = {"steps": 150, "batch_size": 4, "seeds": 3, "stride_seeds": 1, "num_val": 50,
            "machine": {"cpu": "test cpu", "cores": 2, "gpus": 0, "tensorflow": "x",
                        "keras": "y", "python": "z", "load_average": [1.0, 0.5, 0.2]}}
    ablation.write_report(runs, out, meta)
    with open(os.path.join(out, "ablation.json")) as f:
        written = json.load(f)
    assert set(written["table"]) == {"gscnn", "baseline", "stride4"}
    assert [r["seed"] for r in written["runs"]["gscnn"]] == [0, 1, 2]
    assert written["meta"]["steps"] == 150
    assert written["variants"]["baseline"]["overrides"][0] == "model.shape_stream=false"
    text = open(os.path.join(out, "ablation.md")).read()
    miou = written["table"]["gscnn"]["miou"]
    assert f"| gscnn | 3 | {100 * miou['mean']:.1f} ± {100 * miou['std']:.1f} |" in text
    assert "| stride4 | 1 | " in text and "no_dual" not in text.split("## Per-class")[0]
    assert "**pole** | **wire**" in text and "crop 50" in text and "F@5px" in text
    assert "150 steps, batch 4" in text
    assert "Machine: test cpu, 2 cores, 0 GPU; TensorFlow x, Keras y, Python z" in text
    assert os.path.getsize(os.path.join(out, "ablation.png")) > 10_000


def test_main_skips_finished_runs(tmp_path, monkeypatch):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "results")
    _write_runs(runs, {v: (0,) for v in ablation.VARIANTS})
    monkeypatch.setattr(ablation.subprocess, "call",
                        lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert ablation.main(["--seeds", "1", "--stride-seeds", "1", "--runs", runs,
                          "--out", out]) == 0
    with open(os.path.join(out, "ablation.json")) as f:
        assert set(json.load(f)["table"]) == set(ablation.VARIANTS)


def test_main_trains_only_missing_runs(tmp_path, monkeypatch):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "results")
    _write_runs(runs, {"gscnn": (0,), "baseline": (0,)})
    calls = []
    monkeypatch.setattr(ablation.subprocess, "call", lambda cmd, **k: calls.append(cmd) or 1)
    ablation.main(["--seeds", "1", "--stride-seeds", "0", "--steps", "30", "--runs", runs,
                   "--out", out])
    assert [c[c.index("--one") + 1:c.index("--one") + 3] for c in calls] == [
        ["no_dual", "0"], ["no_canny", "0"]]
    assert all(c[c.index("--steps") + 1] == "30" for c in calls)


def test_main_runs_only_the_chosen_variants(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ablation.subprocess, "call", lambda cmd, **k: calls.append(cmd) or 1)
    ablation.main(["--seeds", "2", "--variants", "baseline", "stride4", "--runs",
                   str(tmp_path / "runs"), "--out", str(tmp_path / "results")])
    assert [c[c.index("--one") + 1:c.index("--one") + 3] for c in calls] == [
        ["baseline", "0"], ["baseline", "1"], ["stride4", "0"]]
