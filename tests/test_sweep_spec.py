import pytest

from harness.errors import HarnessError
from harness.sweep import parse_spec


def test_grid_expands_cartesian_product_with_overrides():
    spec = parse_spec({"name": "s", "base": {"train": {"epochs": 2}},
                       "grid": {"method": ["agw", "mclnet"], "seed": [0, 1, 2]}})
    trials = spec.trials({"train.lr": 0.5})
    assert [(t.method, t.seed) for t in trials] == [(m, s) for m in ("agw", "mclnet") for s in (0, 1, 2)]
    assert all(t.train.epochs == 2 and t.train.lr == 0.5 for t in trials)


@pytest.mark.parametrize("data, fragment", [
    ([1, 2], "a sweep spec is a YAML mapping"),
    ({"nmae": "x"}, "unknown key 'nmae'"),
    ({"backend": "slurm"}, "backend 'slurm' is not one of local, optuna, ray"),
    ({"base": {"train": {"lr": "fast"}}}, "base.train.lr: expected a number"),
    ({"grid": {"train.lrr": [1]}}, "unknown config key 'train.lrr'"),
    ({"grid": {"seed": 3}}, "grid.seed must be a non-empty list"),
    ({"search": {"space": {"train.lr": {"type": "normal"}}}}, "is not one of uniform, loguniform, int, categorical"),
    ({"search": {"space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}}, "loguniform needs low > 0"),
    ({"search": {"space": {"train.lr": {"type": "uniform", "low": 2, "high": 1}}}}, "must be below high"),
    ({"search": {"space": {"loss.ica.sigm": {"type": "uniform", "low": 0, "high": 1}}}}, "did you mean loss.ica.sigma"),
    ({"search": {"space": {"method": {"type": "categorical"}}}}, "non-empty list 'choices'"),
    ({"table": {"baselin": "agw"}}, "unknown key 'baselin'"),
    ({"search": {"space": {"train.lr": {"type": "uniform", "low": 0, "high": 1}}, "epochs_per_report": 2}},
     "unknown key 'epochs_per_report'"),  # validation is reported every epoch; nothing is dropped silently
    ({"name": "a b"}, "must be letters"),
])
def test_invalid_specs_are_reported_before_running(data, fragment):
    with pytest.raises(HarnessError) as err:
        parse_spec(data, source="spec.yaml")
    assert fragment in str(err.value) and "spec.yaml" in str(err.value)


def test_repository_specs_are_valid():
    from pathlib import Path

    from harness.sweep import load_spec

    specs = sorted(Path(__file__).parents[1].joinpath("benchmarks").glob("*.yaml"))
    assert specs, "benchmarks/ holds the sweep specs"
    for path in specs:
        spec = load_spec(path)
        assert spec.trials(), path


def test_relative_paths_in_a_spec_are_read_from_the_spec_folder(tmp_path, monkeypatch, capsys):
    """A copied spec runs from any folder: model.pretrained_file, data.root and data.cache_dir
    relative to the spec (base, grid, dry_run, search choices); a path below the working folder is
    kept relative to it (records stay portable), one outside it becomes absolute; --set values and
    absolute paths are taken as given."""
    import yaml

    from harness.cli import main
    from harness.config import TrialConfig
    from harness.sweep import load_spec

    project = tmp_path / "project"
    (project / "specs" / "weights").mkdir(parents=True)
    weights = project / "specs" / "weights" / "w.safetensors"
    import timm
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(weights))
    spec = {"name": "rel", "base": {"model": {"backbone": "test_resnet", "non_local": False,
                                              "pretrained_file": "weights/w.safetensors"},
                                    "data": {"root": "../data", "height": 64, "width": 32}},
            "grid": {"data.cache_dir": ["cache", "/abs/cache"]},
            "dry_run": {"data.root": "dry"},
            "search": {"space": {"data.root": {"type": "categorical", "choices": ["a", "/b"]}}}}
    (project / "specs" / "rel.yaml").write_text(yaml.safe_dump(spec))

    monkeypatch.chdir(project)  # below the working folder: relative to it
    loaded = load_spec("specs/rel.yaml")
    cfgs = loaded.trials()
    assert cfgs[0].model.pretrained_file == "specs/weights/w.safetensors"
    assert cfgs[0].data.root == "data" and [c.data.cache_dir for c in cfgs] == ["specs/cache", "/abs/cache"]
    assert loaded.dry_run == {"data.root": "specs/dry"}
    assert loaded.search.space["data.root"]["choices"] == ["specs/a", "/b"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside it: absolute
    cfg = load_spec(project / "specs" / "rel.yaml").trials()[0]
    assert cfg.model.pretrained_file == str(weights) and cfg.data.root == str(tmp_path / "project" / "data")
    assert TrialConfig.from_dict({"model": {"pretrained_file": "weights/w.safetensors"}}).model.pretrained_file \
        == "weights/w.safetensors"  # a mapping read from no file: as given (the working folder's)

    config = project / "specs" / "trial.yaml"  # vireid run --config: the same rule
    config.write_text(yaml.safe_dump({"model": {"backbone": "test_resnet", "pretrained_file": "weights/none.pth"}}))
    assert main(["run", "--config", str(config), "--results-dir", str(tmp_path / "r"), "--quiet"]) == 2
    assert f"model.pretrained_file: {project / 'specs' / 'weights' / 'none.pth'} is not a file" in \
        capsys.readouterr().err


def test_errors_of_a_spec_without_grid_name_the_file_not_an_empty_grid_point(tmp_path, capsys):
    from harness.cli import main

    config = tmp_path / "one.yaml"
    config.write_text("model: {backbone: no_such_net}\n")
    assert main(["run", "--config", str(config), "--results-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: " in err and "no_such_net" in err and "grid point" not in err
    assert main(["run", "--set", "model.backbone=no_such_net", "--results-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "vireid: error: defaults: " in err and "grid point" not in err
    with pytest.raises(HarnessError, match=r"s.yaml: grid point \{'model.backbone': 'no_such_net'\}"):
        parse_spec({"name": "s", "grid": {"model.backbone": ["no_such_net"]}}, source="s.yaml")


@pytest.mark.parametrize("threads, text", [(1, "1 thread)"), (2, "2 threads)")])
def test_device_label_counts_threads_in_english(threads, text):
    from harness.provenance import hardware_label

    assert hardware_label({"cpu": "x86_64", "cpu_capability": "AVX2", "threads": threads}).endswith(text)


def test_the_methods_comparison_covers_every_registered_family_with_paired_seeds():
    from harness.sweep import load_spec
    from methods.registry import list_composers, resolve_method

    spec = load_spec("benchmarks/methods_synthetic.yaml")
    trials = spec.trials()
    builders = {resolve_method(cfg.method).builder for cfg in trials}
    missing = [c.base for c in list_composers() if c.builder not in builders]
    assert not missing, f"benchmarks/methods_synthetic.yaml has no method of the families {missing}"
    seeds = {m: sorted(cfg.seed for cfg in trials if cfg.method == m) for m in {cfg.method for cfg in trials}}
    assert len({tuple(s) for s in seeds.values()}) == 1 and len(next(iter(seeds.values()))) >= 6  # paired by seed
    assert spec.table["baseline"] in seeds
