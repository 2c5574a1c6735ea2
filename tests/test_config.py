import pytest

from harness.config import TrialConfig, field_paths, parse_override
from harness.errors import HarnessError


def test_defaults_follow_the_spec():
    cfg = TrialConfig()
    assert (cfg.data.height, cfg.data.width) == (288, 144)
    assert (cfg.train.num_identities, cfg.train.images_per_modality) == (8, 4)
    assert cfg.loss.ica.sigma == 8 and cfg.loss.ica.rho == 4500 and cfg.loss.ica.weight == 0.0005
    assert cfg.train.milestones == [20, 50] and cfg.train.warmup_epochs == 10


def test_round_trip_and_overrides():
    cfg = TrialConfig.from_dict({"method": "agw", "train": {"epochs": 3}, "loss": {"ica": {"sigma": 2}}})
    assert cfg.train.epochs == 3 and cfg.loss.ica.sigma == 2.0 and isinstance(cfg.loss.ica.sigma, float)
    again = TrialConfig.from_dict(cfg.to_dict())
    assert again == cfg
    new = cfg.with_overrides({"loss.cca.rho": 10, "train.lr": 0.5})
    assert new.loss.cca.rho == 10.0 and new.train.lr == 0.5 and cfg.train.lr == 0.01


@pytest.mark.parametrize("data, fragment", [
    ({"trian": {}}, "did you mean 'train'"),
    ({"train": {"epochs": "3"}}, "train.epochs: expected an integer"),
    ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer"),
    ({"train": {"amp": "fp8"}}, "train.amp: expected one of 'none', 'bf16', 'fp16'"),
    ({"model": {"non_local": "yes"}}, "model.non_local: expected true or false"),
    ({"train": {"milestones": [1, "a"]}}, "train.milestones[1]"),
    ({"loss": 3}, "loss: expected a mapping"),
])
def test_bad_config_names_the_key(data, fragment):
    with pytest.raises(HarnessError) as err:
        TrialConfig.from_dict(data, where="")
    assert fragment in str(err.value)


def test_unknown_override_key_suggests_paths():
    with pytest.raises(HarnessError, match="loss.ica.sigma"):
        TrialConfig().with_overrides({"loss.ica.sigm": 1})


def test_parse_override_yaml_values():
    assert parse_override("train.milestones=[2, 3]") == ("train.milestones", [2, 3])
    assert parse_override("model.pretrained_file=null") == ("model.pretrained_file", None)
    assert parse_override("train.lr=1e-3") == ("train.lr", 1e-3)
    with pytest.raises(HarnessError, match="KEY=VALUE"):
        parse_override("train.lr")


def test_field_paths_are_leaves():
    paths = field_paths()
    assert "loss.ica.sigma" in paths and "train.lr" in paths and "loss.ica" not in paths


def test_yaml_exponent_floats_are_numbers(tmp_path):
    from harness.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n")
    assert TrialConfig.from_dict(load_yaml(path)).train.lr == 1e-3


def test_malformed_yaml_names_file_and_line(tmp_path):
    from harness.config import load_yaml

    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1,\n")
    with pytest.raises(HarnessError, match=r"bad.yaml: malformed YAML \(line \d+"):
        load_yaml(path)
