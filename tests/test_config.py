import pytest
import yaml

from gscnn_tf.config import Config, ConfigError, config_from_dict, load_config, save_config


def test_defaults_follow_the_paper():
    c = Config()
    assert (c.loss.lambda_edge, c.loss.lambda_seg, c.loss.lambda_att, c.loss.lambda_dual) == (
        20.0, 1.0, 1.0, 1.0)
    assert c.train.momentum == 0.9 and c.train.learning_rate == 0.01
    assert c.eval.tolerances == [3, 5, 9, 12]


def test_yaml_and_overrides_with_type_conversion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbone:\n    name: resnet50\ntrain:\n  learning_rate: 1\n")
    c = load_config(path, ["train.batch_size=4", "data.crop_size=[64, 96]",
                           "model.shape_stream=false", "loss.dual_tau=0.5"])
    assert c.model.backbone.name == "resnet50"
    assert c.train.learning_rate == 1.0 and isinstance(c.train.learning_rate, float)
    assert c.train.batch_size == 4
    assert c.data.crop_size == [64, 96]
    assert c.model.shape_stream is False
    assert c.loss.dual_tau == 0.5


def test_unknown_key_names_key_file_and_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "train.learnig_rate" in msg and str(path) in msg and "train.learning_rate" in msg


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="model.backbone.nmae.*model.backbone.name"):
        load_config(None, ["model.backbone.nmae=x"])


@pytest.mark.parametrize("override,expected", [
    ("train.batch_size=abc", "int"),
    ("train.batch_size=1.5", "int"),
    ("model.shape_stream=3", "bool"),
    ("data.crop_size=5", "list"),
    ("train.learning_rate=true", "float"),
    ("train.mixed_precision=[1]", "expected bool or str"),
    ("train.mixed_precision=1", "expected bool or str.*write true or false"),
])
def test_wrong_types_are_rejected(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_section_must_be_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train"):
        load_config(path)


def test_missing_file_and_bad_override_form(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="a.b=value"):
        load_config(None, ["train.batch_size"])


def test_dump_round_trip(tmp_path):
    c = load_config(None, ["model.backbone.name=wrn38", "eval.scales=[0.75, 1.0, 1.25]"])
    save_config(c, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == c
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["backbone"][
        "name"] == "wrn38"
    assert config_from_dict(c.to_dict()) == c


@pytest.mark.parametrize("value,policy", [
    ("false", "float32"), ("fp32", "float32"), ("true", "mixed_float16"),
    ("fp16", "mixed_float16"), ("bf16", "mixed_bfloat16"), ("BF16", "mixed_bfloat16"),
    ("yes", "mixed_float16"), ("no", "float32"),
])
def test_mixed_precision_values(tmp_path, value, policy):
    from gscnn_tf.precision import training_policy

    c = load_config(None, [f"train.mixed_precision={value}"])
    assert training_policy(c.train) == policy
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  mixed_precision: {value}\n")
    assert training_policy(load_config(path).train) == policy
    save_config(c, tmp_path / "saved.yaml")
    assert training_policy(load_config(tmp_path / "saved.yaml").train) == policy


def test_mixed_precision_unknown_value():
    from gscnn_tf.precision import training_policy

    c = load_config(None, ["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="train.mixed_precision 'fp8'.*bf16"):
        training_policy(c.train)
