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
