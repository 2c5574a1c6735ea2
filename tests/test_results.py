import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.results import (ResultStore, add_deltas, aggregate, pareto_front, table_frame, to_latex, to_markdown,
                             write_report)


def _record(method, seed, rank1, mAP, protocol="all-single", status="ok", **kw):
    base = {"trial_key": f"{method}-{seed}", "method": method, "seed": seed, "status": status, "protocol": protocol,
            "rank1": rank1, "rank5": rank1, "rank10": rank1 + 10, "rank20": rank1 + 20, "mAP": mAP, "mINP": mAP / 2,
            "train_img_per_s": 100.0 + seed, "infer_img_per_s": 300.0, "failure": None,
            "cmc": json.dumps([rank1 / 100] * 20)}
    base.update(kw)
    return base


def _store(tmp_path, records):
    store = ResultStore(tmp_path / "sweep")
    for r in records:
        store.put_trial(r["trial_key"] + r["protocol"], [r])
    return store


def test_aggregate_mean_std_and_delta_by_hand(tmp_path):
    store = _store(tmp_path, [
        _record("agw", 0, 40.0, 30.0), _record("agw", 1, 44.0, 34.0),
        _record("mclnet", 0, 50.0, 41.0), _record("mclnet", 1, 56.0, 45.0), _record("mclnet", 2, 53.0, 40.0),
        _record("agw", 0, 1.0, 1.0, protocol="indoor-single"),
    ])
    agg = aggregate(store.dataframe(), protocol="all-single")
    assert agg["method"].tolist() == ["agw", "mclnet"]
    agw, mcl = agg.iloc[0], agg.iloc[1]
    assert agw["rank1"] == pytest.approx(42.0)
    assert agw["rank1_std"] == pytest.approx(math.sqrt(((40 - 42) ** 2 + (44 - 42) ** 2) / 1))
    assert mcl["rank1"] == pytest.approx(53.0)
    assert mcl["rank1_std"] == pytest.approx(math.sqrt((9 + 9 + 0) / 2))
    assert mcl["mAP"] == pytest.approx(42.0) and mcl["n"] == 3
    d = add_deltas(agg, "agw")
    assert d.iloc[1]["delta_rank1"] == pytest.approx(11.0) and d.iloc[1]["delta_mAP"] == pytest.approx(10.0)
    assert d.iloc[0]["delta_rank1"] == 0
    with pytest.raises(HarnessError, match="baseline 'nope'"):
        add_deltas(agg, "nope")
    with pytest.raises(HarnessError, match="recorded protocols: all-single, indoor-single"):
        aggregate(store.dataframe(), protocol="nope")


def test_failed_trials_are_counted_not_averaged(tmp_path):
    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0),
                              _record("agw", 1, float("nan"), float("nan"), status="failed", failure="boom")])
    agg = aggregate(store.dataframe())
    assert agg.iloc[0]["rank1"] == 40.0 and agg.iloc[0]["failed"] == 1 and agg.iloc[0]["n"] == 1
    frame = table_frame(agg)
    assert frame["runs"].iloc[0] == "1 (1 failed)"


def test_best_is_marked_and_rendered(tmp_path):
    store = _store(tmp_path, [_record("a", 0, 40.0, 50.0), _record("b", 0, 45.0, 20.0)])
    frame = table_frame(aggregate(store.dataframe()), mark_best="**{}**")
    assert frame["Rank-1"].tolist() == ["40.00", "**45.00**"]  # one seed: no std shown
    assert frame["mAP"].iloc[0].startswith("**50.00")
    md = to_markdown(frame)
    assert md.splitlines()[0].startswith("| method | runs | Rank-1")
    tex = to_latex(table_frame(aggregate(store.dataframe()), mark_best="\\textbf{{{}}}"))
    assert "\\textbf{45.00}" in tex and "50.00" in tex


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.random((40, 2))
    front = set(pareto_front(pts).tolist())
    for i, p in enumerate(pts):
        dominated = any((q >= p).all() and (q > p).any() for q in pts)
        assert (i not in front) == dominated


def test_store_replaces_a_trial_atomically(tmp_path):
    store = ResultStore(tmp_path / "s")
    store.put_trial("k", [_record("a", 0, 1.0, 1.0), _record("a", 0, 2.0, 2.0, protocol="indoor-single")])
    store.put_trial("k", [_record("a", 0, 3.0, 3.0)])
    df = store.dataframe()
    assert len(df) == 1 and df["rank1"].iloc[0] == 3.0
    with pytest.raises(TypeError):
        store.put_trial("k", [_record("a", 0, 5.0, 5.0), {"status": "ok", "bad": object()}])
    df = store.dataframe()  # the failed transaction left the previous records intact
    assert len(df) == 1 and df["rank1"].iloc[0] == 3.0


def test_write_report_files(tmp_path):
    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0), _record("mclnet", 0, 50.0, 41.0)])
    store.put_trial("agw-1", [_record("agw", 1, 44.0, 30.0)])
    md, files = write_report(store.folder, baseline="agw")
    assert "42.00 ± 2.83" in md  # mean and sample std of 40 and 44
    assert "Δ Rank-1" in md and "+8.00" in md
    names = {f.name for f in files}
    assert {"table-all-single.md", "table-all-single.csv", "table-all-single.tex", "cmc-all-single.png"} <= names
    csv = pd.read_csv(store.folder / "table-all-single.csv")
    assert csv["rank1"].tolist() == [42.0, 50.0]
    with pytest.raises(HarnessError, match="no records.sqlite"):
        write_report(tmp_path / "missing")


def test_pruned_trials_are_counted_apart_from_failures(tmp_path):
    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0),
                              _record("agw", 1, float("nan"), float("nan"), status="pruned", failure="pruned at 1"),
                              _record("agw", 2, float("nan"), float("nan"), status="failed", failure="boom")])
    agg = aggregate(store.dataframe())
    assert (agg.iloc[0]["n"], agg.iloc[0]["failed"], agg.iloc[0]["pruned"]) == (1, 1, 1)
    assert table_frame(agg)["runs"].iloc[0] == "1 (1 failed) (1 pruned)"


def test_progress_without_rich_prints_plain_lines(monkeypatch, capsys):
    import harness.progress as progress

    monkeypatch.setattr(progress, "Progress", None)
    with progress.SweepProgress(total=3, title="s") as p:
        p.trial_skipped("ok")
        p.trial_started("agw seed=0", epochs=2)
        p.epoch(0, {"total": 1.0})
        p.trial_finished("ok", score=12.5)
        p.trial_finished("failed", failure="boom")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[1/3") and "1 resumed" in err[0]
    assert "started agw seed=0" in err[1]
    assert "1 ok" in err[2] and "best Rank-1 12.5" in err[2]
    assert "trial failed: boom" in err[3] and "1 failed" in err[4]
