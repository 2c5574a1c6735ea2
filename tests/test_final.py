"""Search -> final: the best validation trial is retrained on all training identities and tested."""

import json

import pytest
import yaml

from harness.cli import main
from harness.config import TrialConfig, load_yaml
from harness.errors import ConfigError
from harness.provenance import config_key
from harness.results import ResultStore
from harness.sweep import parse_spec
from tests.conftest import TINY

SEARCH = {"space": {"train.lr": {"type": "loguniform", "low": 0.001, "high": 0.05}}, "n_trials": 2,
          "objective": "val_mAP", "sampler": "random", "pruner": "none"}


def _spec(tmp_path, **extra):
    base = {**TINY, "data": {**TINY["data"], "val_identities": 4}, "train": {**TINY["train"], "epochs": 1}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny-search", "backend": "optuna", "base": base, "search": SEARCH,
                                    "table": {"protocols": ["all-single"]}, **extra}))
    return path


@pytest.mark.slow
def test_search_then_final_end_to_end(tmp_path, capsys):
    spec = _spec(tmp_path, final={"seeds": [0]})
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    search = ResultStore(tmp_path / "tiny-search").dataframe()
    finished = search[search["status"] == "ok"].drop_duplicates("trial_key")
    best = finished.loc[finished["val_mAP"].astype(float).idxmax()]  # chosen on validation identities only
    final = ResultStore(tmp_path / "tiny-search-final").dataframe()
    assert len(final) == 1 and set(final["status"]) == {"ok"}
    chosen_cfg = json.loads(final["config"].iloc[0])
    best_cfg = json.loads(best["config"])
    assert chosen_cfg["train"]["lr"] == best_cfg["train"]["lr"]
    assert best_cfg["data"]["val_identities"] == 4 and chosen_cfg["data"]["val_identities"] == 0
    assert final["num_classes"].iloc[0] == best["num_classes"] + 4  # all training identities
    assert set(search["protocol"].dropna()) == {"val"}  # search trials never evaluated a test protocol
    searched = (tmp_path / "tiny-search" / "table.md").read_text()
    assert "val_mAP" in searched and "Rank-1" not in searched and "all-single" not in searched
    assert f"| {best['trial_id']} | mclnet |" in searched.splitlines()[4]  # the best trial heads the table, ticked
    assert searched.splitlines()[4].endswith("| ✓ |")
    table = (tmp_path / "tiny-search-final" / "table.md").read_text()
    assert "chosen by" in table and "tiny-search on val_mAP" in table and best["trial_key"] in table
    assert "tiny-search: best val_mAP" in " ".join(out.split())
    # the exported configuration is what `vireid run --config` loads, and it is the final trial
    exported = tmp_path / "tiny-search-final" / "chosen.yaml"
    cfg = TrialConfig.from_dict(load_yaml(exported), where=str(exported))
    assert config_key(cfg) == final["trial_key"].iloc[0]


def test_final_block_is_validated_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="final: unknown key"):
        parse_spec({"name": "s", "base": TINY, "search": SEARCH, "final": {"seed": [0]}})
    with pytest.raises(ConfigError, match="needs a search block"):
        parse_spec({"name": "s", "base": TINY, "final": {"seeds": [0]}})
    with pytest.raises(ConfigError, match="not an objective of the search"):
        parse_spec({"name": "s", "base": TINY, "search": SEARCH, "final": {"objective": "train_img_per_s"}})
    with pytest.raises(ConfigError, match="seeds"):
        parse_spec({"name": "s", "base": TINY, "search": SEARCH, "final": {"seeds": [-1]}})


def test_final_on_a_grid_spec_is_refused(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "base": TINY, "grid": {"seed": [0]}}))
    assert main(["sweep", str(grid), "--final", "--results-dir", str(tmp_path), "--quiet"]) == 2
    assert "--final needs a search spec" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
