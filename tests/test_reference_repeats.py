"""The committed main-job reference repeats digit for digit on the library versions it names.

One trial of `results/reference/ablation-synthetic` (the cheapest preset, seed 0) is retrained from
the config stored in its record and must give exactly the stored metrics. Where the installed
library versions differ from those the reference was made with (another torch, say), the numbers
are not expected to repeat and the test says so instead of failing.
"""

import json
from pathlib import Path

import pytest

from harness.config import TrialConfig
from harness.provenance import library_versions
from harness.results import ResultStore
from harness.trial import run_trial

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "ablation-synthetic"
METRICS = ("rank1", "rank10", "rank20", "mAP", "mINP")


@pytest.mark.slow
def test_one_trial_of_the_committed_main_job_repeats_digit_for_digit(monkeypatch):
    monkeypatch.chdir(REFERENCE.parents[2])  # the stored config names the pre-trained backbone by a relative path
    records = ResultStore(REFERENCE).dataframe()
    ok = records[(records["status"] == "ok") & (records["method"] == "agw") & (records["seed"] == 0)]
    assert len(ok) >= 1, "the reference holds the agw seed-0 trial"
    stored_versions = json.loads(ok.iloc[0]["versions"])
    installed = library_versions()
    if stored_versions != installed:
        pytest.skip(f"reference made with {stored_versions}, installed {installed}: "
                    "install from requirements/lock.txt to repeat it digit for digit")
    result = run_trial(TrialConfig.from_dict(json.loads(ok.iloc[0]["config"])))
    assert result.status == "ok", result.failure
    fresh = {r["protocol"]: r for r in result.records}
    # the key covers the backbone file's content: the committed weights are the ones it was made with
    assert {r["trial_key"] for r in result.records} == {ok.iloc[0]["trial_key"]}
    for _, stored in ok.iterrows():
        for metric in METRICS:
            assert fresh[stored["protocol"]][metric] == stored[metric], (stored["protocol"], metric)


def test_keys_added_to_the_config_since_the_reference_leave_its_trial_keys_unchanged(monkeypatch):
    """The reference was stored before `mcm.confusion_variant` and `model.gem_variant` existed: at their
    defaults its trials keep their keys (a rerun skips them), any other value makes another trial."""
    from harness.provenance import config_key

    monkeypatch.chdir(REFERENCE.parents[2])  # the key hashes the backbone file named by a relative path
    records = ResultStore(REFERENCE).dataframe().drop_duplicates("trial_key")
    stored = [json.loads(c) for c in records["config"]]
    assert all("confusion_variant" not in c["mcm"] and "gem_variant" not in c["model"] for c in stored)
    configs = [TrialConfig.from_dict(c) for c in stored]
    assert [config_key(c) for c in configs] == list(records["trial_key"])
    changed = configs[0].with_overrides({"mcm.confusion_variant": "authors-code"})
    assert config_key(changed) != records["trial_key"].iloc[0]
    assert config_key(configs[0].with_overrides({"model.gem_variant": "authors-code"})) != config_key(changed)
