import dataclasses
import typing

import pytest

from harness.config import (
    TrainConfig,
    TrialConfig,
    field_paths,
    get_dotted,
    parse_override,
)
from harness.errors import ConfigError, HarnessError
from harness.preflight import check_buildable


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


# ------------------------------------------------------------------ ranges: every numeric key, one place

@pytest.mark.parametrize("override, key", [
    ({"train.num_identities": 0}, "train.num_identities"),
    ({"train.epochs": -1}, "train.epochs"),
    ({"train.epochs": 0}, "train.epochs"),
    ({"train.lr": -1}, "train.lr"),
    ({"train.lr": 0}, "train.lr"),
    ({"train.pad": -1}, "train.pad"),
    ({"train.erasing_p": 2}, "train.erasing_p"),
    ({"train.warmup_epochs": -3}, "train.warmup_epochs"),
    ({"data.val_identities": -1}, "data.val_identities"),
    ({"train.iters_per_epoch": -5}, "train.iters_per_epoch"),
    ({"data.height": 10**9}, "data.height"),  # would ask for terabytes when the images are decoded
    ({"data.synthetic.width": 100_000}, "data.synthetic.width"),
    ({"train.images_per_modality": -2}, "train.images_per_modality"),
    ({"train.eval_batch_size": 0}, "train.eval_batch_size"),
    ({"train.threads": -3}, "train.threads"),
    ({"loss.label_smoothing": 2}, "loss.label_smoothing"),
    ({"loss.label_smoothing": 1}, "loss.label_smoothing"),
    ({"train.erasing_area": [0.5]}, "train.erasing_area"),
    ({"train.erasing_area": [0.5, 0.2]}, "train.erasing_area"),
    ({"train.erasing_area": [0.0, 0.2]}, "train.erasing_area[0]"),
    ({"train.erasing_area": [0.1, 1.5]}, "train.erasing_area[1]"),
    ({"train.milestones": [50, 20]}, "train.milestones"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**66}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"data.modes": []}, "data.modes"),
    ({"data.shots": []}, "data.shots"),
    ({"data.trial": 11}, "data.trial"),
    ({"data.trial": 0}, "data.trial"),  # RegDB's splits are numbered 1..10
    ({"loss.ica.sigma": -1}, "loss.ica.sigma"),
    ({"mcm.momentum": 1.5}, "mcm.momentum"),
    ({"train.gamma": float("nan")}, "train.gamma"),
    ({"loss.cca.rho": float("inf")}, "loss.cca.rho"),
])
def test_out_of_range_value_names_key_value_and_range(override, key):
    with pytest.raises(ConfigError) as err:
        TrialConfig().with_overrides(override, where="spec.yaml")
    message = str(err.value)
    assert message.startswith(f"spec.yaml.{key}: expected"), message
    value = next(iter(override.values()))
    if key.endswith("]"):
        value = value[int(key[-2])]
    shown = (f"got {value!r}", f"got {float(value)!r}") if isinstance(value, (int, float)) else (f"got {value!r}",)
    assert message.endswith(shown), message


@pytest.mark.parametrize("override", [
    {"seed": 0}, {"seed": 2**32 - 1}, {"train.erasing_area": [0.3, 0.3]}, {"train.erasing_area": [0.02, 1.0]},
    {"loss.label_smoothing": 0.1}, {"train.iters_per_epoch": None}, {"train.threads": 1}, {"train.warmup_epochs": 0},
    {"train.erasing_p": 1}, {"data.val_identities": 0}, {"data.trial": 1}, {"data.trial": 10},
])
def test_boundary_values_are_accepted(override):
    cfg = TrialConfig().with_overrides(override)
    key, value = next(iter(override.items()))
    assert get_dotted(cfg.to_dict(), key) == value


def test_direct_construction_checks_ranges():
    with pytest.raises(ConfigError, match=r"TrainConfig.epochs: expected a value >= 1, got 0"):
        TrainConfig(epochs=0)


def test_every_numeric_key_declares_a_range():
    """A new numeric key must say which values it accepts (see the top of harness/config.py)."""
    def walk(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from walk(hints[f.name], f"{prefix}{f.name}.")
            elif any(t in (int, float) for t in _leaf_types(hints[f.name])):
                yield f"{prefix}{f.name}", f.metadata.get("range")

    missing = [path for path, rule in walk(TrialConfig) if rule is None]
    assert missing == []


def _leaf_types(tp):
    args = typing.get_args(tp)
    return [t for a in args for t in _leaf_types(a)] if args else [tp]


# ------------------------------------------------------------------ buildability, before anything trains

@pytest.mark.parametrize("override, fragment", [
    ({"model.backbone": "test_vit", "model.non_local": False, "data.height": 33, "data.width": 17}, "33x17"),
    ({"model.backbone": "test_convnext", "model.non_local": False, "data.height": 8, "data.width": 4}, "8x4"),
    ({"model.backbone": "test_convnext"}, "model.non_local"),
    ({"model.backbone": "resnet5O"}, "unknown timm backbone 'resnet5O'"),
    ({"method": "mclnett"}, "did you mean mclnet"),
    ({"model.pretrained_file": "/nonexistent/w.pth"}, "model.pretrained_file"),
])
def test_unbuildable_config_is_refused_cheaply(override, fragment):
    cfg = TrialConfig().with_overrides({"model.backbone": "test_resnet", **override})
    with pytest.raises(ConfigError) as err:
        check_buildable(cfg, "spec.yaml")
    assert str(err.value).startswith("spec.yaml: ") and fragment.lower() in str(err.value).lower()


def test_buildable_configs_pass():
    for override in ({"model.backbone": "test_resnet", "data.height": 96, "data.width": 48},
                     {"model.backbone": "test_vit", "model.non_local": False, "data.height": 160, "data.width": 160}):
        check_buildable(TrialConfig().with_overrides(override))


# ------------------------------------------------------------------ YAML: strict, bounded

def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_duplicate_yaml_key_is_refused_with_key_and_line(tmp_path):
    from harness.config import load_yaml

    path = _write(tmp_path, "train:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: duplicate key 'epochs' \(line 4; first set on line 2\)"):
        load_yaml(path)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    from harness.config import load_yaml

    path = _write(tmp_path, "base: &d {a: 1, b: 2}\nother:\n  <<: *d\n  a: 3\n")
    assert load_yaml(path)["other"] == {"a": 3, "b": 2}


def test_alias_bomb_is_refused_within_a_second(tmp_path):
    import time

    from harness.config import load_yaml

    levels = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 10))
    path = _write(tmp_path, "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + levels
                  + "description: *l9\n")  # 10**10 strings once expanded
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_yaml(path)
    assert time.perf_counter() - started < 1.0


def test_recursive_alias_is_refused(tmp_path):
    from harness.config import load_yaml

    with pytest.raises(ConfigError, match="recursive alias"):
        load_yaml(_write(tmp_path, "grid: &g {seed: [*g]}\n"))


def test_non_utf8_yaml_is_refused_with_a_message(tmp_path):
    from harness.config import load_yaml

    with pytest.raises(ConfigError, match="c.yaml: not UTF-8"):
        load_yaml(_write(tmp_path, "description: caf\xe9\n".encode("latin-1")))


def test_override_values_use_the_strict_reader():
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_override("train.milestones={a: 1, a: 2}")


def test_keys_added_later_leave_the_keys_of_recorded_results_unchanged(monkeypatch):
    """Every record of the committed reference keeps its stored key; a later key set off its default changes it."""
    import json
    from pathlib import Path

    from harness.provenance import config_key
    from harness.results import ResultStore

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the stored configs name the pre-trained backbone by a relative path
    records = ResultStore(root / "results" / "reference" / "ablation-synthetic").dataframe()
    assert len(records) >= 36
    for _, record in records.drop_duplicates("trial_key").iterrows():
        stored = json.loads(record["config"])
        assert "flip" not in stored["evaluation"]  # recorded before evaluation.flip existed
        cfg = TrialConfig.from_dict(stored)
        assert config_key(cfg) == record["trial_key"]
        assert config_key(cfg.with_overrides({"evaluation.flip": True})) != record["trial_key"]
