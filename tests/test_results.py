"""Record store, statistics over seeds, paired deltas, tables and figures.

Expected values are computed here from the published formulas (t quantiles from a printed
table, the t distribution's density integrated numerically, sign flips enumerated by hand).
"""

import dataclasses
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from harness.errors import ConfigError, HarnessError, InputError
from harness.results import (
    ResultStore,
    add_deltas,
    pareto_front,
    summarise,
    write_report,
)
from harness.results.paper import paper_frame, render_terminal
from harness.results.stats import mean_interval, paired_difference, sign_flip_p
from harness.results.tables import best_marks, format_number, statistics_frame

T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 5: 2.5706, 9: 2.2622}  # two-sided 95 % t quantiles (printed tables)


def _record(method, seed, rank1, mAP, protocol="all-single", status="ok", backbone="test_resnet",
            dataset="sysu", device="cpu (x86_64, 2 threads)", torch="2.14.1", **kw):
    cfg = {"method": method, "seed": seed, "model": {"backbone": backbone}, "data": {"dataset": dataset, "trial": 1}}
    base = {"trial_key": f"{method}-{seed}-{backbone}", "method": method, "backbone": backbone, "dataset": dataset,
            "seed": seed, "config": json.dumps(cfg, sort_keys=True), "status": status, "protocol": protocol,
            "failure": None, "rank1": rank1, "rank5": rank1, "rank10": rank1 + 10, "rank20": rank1 + 20, "mAP": mAP,
            "mINP": mAP / 2, "rank1_std": 1.5, "mAP_std": 0.5, "train_img_per_s": 100.0 + seed,
            "infer_img_per_s": 300.0, "cmc": json.dumps([rank1 / 100] * 20), "device": device,
            "versions": json.dumps({"torch": torch, "numpy": "2.0"})}
    base.update(kw)
    return base


def _store(tmp_path, records, name="sweep"):
    store = ResultStore(tmp_path / name)
    for r in records:
        store.put_trial(r["trial_key"] + str(r["protocol"]), [r])
    return store


# --------------------------------------------------------------------------- statistics


def test_mean_interval_against_the_t_table():
    ci = mean_interval(np.array([40.0, 44.0]))
    assert (ci.mean, ci.n) == (42.0, 2) and ci.std == pytest.approx(math.sqrt(8))
    half = T975[1] * math.sqrt(8) / math.sqrt(2)
    assert (ci.low, ci.high) == (pytest.approx(42 - half, abs=1e-3), pytest.approx(42 + half, abs=1e-3))
    ci = mean_interval(np.array([50.0, 56.0, 53.0, 51.0]))
    sd = math.sqrt(((50 - 52.5) ** 2 + (56 - 52.5) ** 2 + 0.25 + 2.25) / 3)
    assert ci.high - ci.mean == pytest.approx(T975[3] * sd / 2, abs=1e-3)
    one = mean_interval(np.array([7.0]))
    assert one.mean == 7.0 and math.isnan(one.std) and math.isnan(one.low)


def test_exact_sign_flip_test_by_hand():
    # sums of +-2 +-1 +-3: 6, 0, 4, -2, 2, -4, 0, -6; |sum| >= 4 in 4 of 8 assignments
    assert sign_flip_p(np.array([2.0, -1.0, 3.0])) == pytest.approx(0.5)
    # all of n differences positive: only the observed and the all-flipped assignment reach |sum|
    assert sign_flip_p(np.ones(4)) == pytest.approx(2 / 16)
    assert sign_flip_p(np.arange(1.0, 7.0)) == pytest.approx(2 / 64)
    d = paired_difference(np.array([45.0, 47, 44, 46, 48, 45]), np.array([40.0, 41, 40, 41, 42, 40]))
    assert d.test == "sign-flip" and d.p == pytest.approx(2 / 64) and d.significant
    assert d.mean == pytest.approx(31 / 6)
    small = paired_difference(np.array([45.0, 47, 44]), np.array([40.0, 41, 40]))
    assert small.p == pytest.approx(2 / 8) and not small.significant  # CI excludes 0 but p cannot reach 0.05


def _t_two_sided_p(t, dof):
    """P(|T| >= |t|) by integrating the Student t density (Simpson's rule)."""
    c = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))
    x = np.linspace(0, abs(t), 20001)
    y = c * (1 + x ** 2 / dof) ** (-(dof + 1) / 2)
    h = x[1] - x[0]
    inner = h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
    return 1 - 2 * inner


def test_paired_t_test_for_ten_pairs_against_the_formula():
    a = np.array([41.0, 43, 40, 44, 42, 45, 41, 43, 44, 42])
    b = np.array([40.0, 41, 41, 42, 40, 43, 41, 41, 42, 41])
    d = a - b
    mean, sd = d.mean(), d.std(ddof=1)
    t = mean / (sd / math.sqrt(10))
    res = paired_difference(a, b)
    assert res.test == "paired t" and res.n == 10
    assert res.p == pytest.approx(_t_two_sided_p(t, 9), abs=1e-4)
    assert res.low == pytest.approx(mean - T975[9] * sd / math.sqrt(10), abs=1e-3)
    assert res.significant == (res.low > 0)


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.random((40, 2))
    front = set(pareto_front(pts).tolist())
    for i, p in enumerate(pts):
        dominated = any((q >= p).all() and (q > p).any() for q in pts)
        assert (i not in front) == dominated
    flipped = set(pareto_front(pts * [1, -1], ("max", "min")).tolist())
    assert flipped == front


def test_format_number_never_prints_negative_zero():
    assert format_number(-0.001, 2) == "0.00"
    assert format_number(-0.001, 2, sign=True) == "+0.00"
    assert format_number(float("nan"), 2) == "-"
    assert format_number(2.345, 1) == "2.3"


# --------------------------------------------------------------------------- store


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


def test_reading_a_store_never_modifies_its_folder(tmp_path):
    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0), _record("agw", 1, 42.0, 31.0)])
    before = {p.name: p.stat().st_mtime_ns for p in store.folder.iterdir()}
    assert set(before) == {"records.sqlite"}
    os.chmod(store.path, 0o444)
    try:
        assert len(store.dataframe()) == 2 and store.statuses() == {"agw-0-test_resnetall-single": "ok",
                                                                    "agw-1-test_resnetall-single": "ok"}
    finally:
        os.chmod(store.path, 0o644)
    assert {p.name: p.stat().st_mtime_ns for p in store.folder.iterdir()} == before
    assert ResultStore(tmp_path / "absent").dataframe().empty and not (tmp_path / "absent").exists()


def test_one_record_type_for_every_status():
    from harness.config import TrialConfig
    from harness.results import TrialRecord

    cfg = TrialConfig.from_dict({"method": "agw", "data": {"dataset": "synthetic", "synthetic": {"layout": "regdb"}}})
    ok = TrialRecord.ok(cfg, protocol="v2t", fields={"rank1": 1.0})
    failed = TrialRecord.failed(cfg, "boom", fields={"wall_seconds": 2.0})
    pruned = TrialRecord.pruned(cfg, "stopped at epoch 1")
    assert {r.dataset for r in (ok, failed, pruned)} == {"synthetic-regdb"}
    assert ok.trial_key == failed.trial_key == pruned.trial_key and ok.config == failed.config
    assert ok.as_dict()["rank1"] == 1.0 and failed.as_dict()["failure"] == "boom"
    with pytest.raises(ValueError, match="redefine status"):
        TrialRecord.ok(cfg, protocol="v2t", fields={"status": "failed"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.status = "failed"


# --------------------------------------------------------------------------- aggregation and deltas


def test_summary_statistics_failed_and_pruned_counts(tmp_path):
    store = _store(tmp_path, [
        _record("agw", 0, 40.0, 30.0), _record("agw", 1, 44.0, 34.0),
        _record("mclnet", 0, 50.0, 41.0), _record("mclnet", 1, 56.0, 45.0), _record("mclnet", 2, 53.0, 40.0),
        _record("agw", 0, 1.0, 1.0, protocol="indoor-single"),
        _record("agw", 3, float("nan"), float("nan"), status="failed", protocol=None, failure="boom"),
        _record("agw", 4, float("nan"), float("nan"), status="pruned", protocol=None, failure="pruned at 1"),
    ])
    s = summarise(store.dataframe(), protocol="all-single")
    rows = s.rows.set_index("method")
    assert rows.loc["agw", "rank1"] == pytest.approx(42.0)
    assert rows.loc["agw", "rank1_std"] == pytest.approx(math.sqrt(8))
    assert rows.loc["mclnet", "rank1_std"] == pytest.approx(3.0) and rows.loc["mclnet", "n"] == 3
    assert (rows.loc["agw", "n"], rows.loc["agw", "failed"], rows.loc["agw", "pruned"]) == (2, 1, 1)
    assert rows.loc["agw", "rank1_gallery_std"] == pytest.approx(1.5)  # gallery spread kept apart from seeds
    with pytest.raises(InputError, match="recorded protocols: all-single, indoor-single"):
        summarise(store.dataframe(), protocol="nope")


def test_deltas_are_paired_by_seed(tmp_path):
    # mclnet has an extra seed 2: the paired delta uses seeds 0 and 1 only
    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0), _record("agw", 1, 44.0, 30.0),
                              _record("mclnet", 0, 43.0, 31.0), _record("mclnet", 1, 46.0, 33.0),
                              _record("mclnet", 2, 90.0, 90.0)])
    s = add_deltas(summarise(store.dataframe()), "agw")
    row = s.rows.set_index("method").loc["mclnet"]
    assert row["rank1_delta"] == pytest.approx(2.5) and row["rank1_delta_n"] == 2
    half = T975[1] * math.sqrt(0.5) / math.sqrt(2)  # differences 3 and 2
    assert row["rank1_delta_ci_low"] == pytest.approx(2.5 - half, abs=1e-3)
    assert row["rank1_delta_p"] == pytest.approx(0.5)  # 2 pairs: exact sign-flip p is at least 2/4
    assert math.isnan(s.rows.set_index("method").loc["agw", "rank1_delta"])  # the baseline itself
    with pytest.raises(ConfigError, match="baseline 'nope'"):
        add_deltas(summarise(store.dataframe()), "nope")


def _six_seeds(tmp_path, gap_b, gap_c):
    noise = [0.3, -0.2, 0.1, -0.4, 0.2, 0.0]
    records = []
    for seed, e in enumerate(noise):
        records += [_record("agw", seed, 40.0 + e, 30.0), _record("agw+mcm", seed, 40.0 + gap_b + e * 2, 30.0),
                    _record("mclnet", seed, 40.0 + gap_c - e, 30.0)]
    return _store(tmp_path, records)


def test_best_is_bold_only_when_significantly_better_than_the_runner_up(tmp_path):
    s = add_deltas(summarise(_six_seeds(tmp_path, 2.0, 6.0).dataframe()), "agw")
    assert best_marks(s, "rank1") == ["", "", "best"]
    frame = paper_frame([s])
    cells = frame[("SYSU all", "Rank-1")].tolist()
    assert cells[2].startswith("**") and "†" not in "".join(cells)
    stats = statistics_frame(s)
    delta = stats[(stats["method"] == "mclnet") & (stats["metric"] == "Rank-1")]["Δ"].item()
    assert delta.endswith("*")  # CI excludes 0 and p = 2/64
    flat = stats[(stats["method"] == "mclnet") & (stats["metric"] == "mAP")]["Δ"].item()
    assert flat == "+0.00"


def test_rows_tied_with_the_best_are_marked_not_bolded(tmp_path):
    s = summarise(_six_seeds(tmp_path, 5.8, 6.0).dataframe())
    marks = best_marks(s, "rank1")
    assert marks == ["", "tied", "tied"]
    cells = paper_frame([s])[("SYSU all", "Rank-1")].tolist()
    assert "**" not in "".join(cells) and cells[1].endswith("†") and cells[2].endswith("†")


def test_a_single_seed_claims_no_interval_and_says_so(tmp_path):
    store = _store(tmp_path, [_record("a", 0, 40.0, 50.0), _record("b", 0, 45.0, 20.0)])
    report = write_report(store.folder, baseline="a", plots=False)
    s = report.summaries[0]
    assert best_marks(s, "rank1") == ["", ""]
    assert "Every row has n = 1: no CI, no significance claim; nothing is marked." in report.markdown
    assert "MCM: ;" not in report.terminal and "CCA: " not in report.terminal  # switches off: not named empty
    stats = statistics_frame(s)
    assert set(stats["95% CI"]) == {"-"} and set(stats["Δ 95% CI"]) == {"-"}
    assert "45.00 ±" not in report.markdown


def test_configurations_are_not_averaged_as_seeds_and_group_by_is_checked(tmp_path):
    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0, backbone="resnet18"),
                              _record("agw", 0, 60.0, 50.0, backbone="resnet50")])
    s = summarise(store.dataframe())
    assert len(s.rows) == 2 and s.key_columns == ["method", "model.backbone"]
    assert sorted(s.rows["rank1"]) == [40.0, 60.0] and set(s.rows["n"]) == {1}
    by_backbone = summarise(store.dataframe(), group_by=["model.backbone"])
    assert by_backbone.key_columns == ["model.backbone"] and len(by_backbone.rows) == 2
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'nonexistent'.*swept keys model.backbone"):
        summarise(store.dataframe(), group_by=["nonexistent"])
    with pytest.raises(ConfigError, match="seed repeats a configuration"):
        summarise(store.dataframe(), group_by=["seed"])


def test_cli_refuses_an_unknown_group_by_before_writing(tmp_path, capsys):
    from harness.cli import main

    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0)])
    assert main(["table", str(store.folder), "--group-by", "nonexistent_column", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "nonexistent_column" in err and "model.backbone" in err
    assert sorted(p.name for p in store.folder.iterdir()) == ["records.sqlite"]


# --------------------------------------------------------------------------- tables


def _two_protocols(tmp_path, **kw):
    records = []
    for method, base in (("agw", 40.0), ("agw+mcm+center", 44.0), ("mclnet", 48.0)):
        for seed in range(3):
            records += [_record(method, seed, base + seed, base - 5, **kw),
                        _record(method, seed, base + 2 + seed, base, protocol="indoor-single", **kw)]
    return _store(tmp_path, records)


def test_paper_table_layout_markdown_latex_and_terminal(tmp_path):
    store = _two_protocols(tmp_path)
    report = write_report(store.folder, baseline="agw", plots=False)
    frame = paper_frame(report.summaries)
    assert list(frame.columns[:5]) == [("", "method"), ("", "MCM"), ("", "ICA/center"), ("", "CCA"), ("", "runs")]
    assert [c for c in frame.columns[5:]] == [(p, m) for p in ("SYSU all", "SYSU indoor")
                                              for m in ("Rank-1", "Rank-10", "Rank-20", "mAP", "mINP")]
    assert frame.iloc[2, 1:4].tolist() == ["✓", "ICA", "✓"] and frame.iloc[1, 1:4].tolist() == ["✓", "center", ""]
    assert frame[("SYSU all", "Rank-1")].iloc[0] == "41.00 ± 1.00"
    md = (store.folder / "table.md").read_text()
    assert "| method | MCM | ICA/center | CCA | runs | SYSU all Rank-1 |" in md
    tex = (store.folder / "table.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\multicolumn{5}{c}{SYSU all}" in tex
    assert "\\checkmark" in tex and "$\\pm$" in tex
    assert tex.startswith("% needs \\usepackage{booktabs}") and "\\usepackage{amssymb}" in tex.splitlines()[0]
    assert "\\begin{table*}" in tex and "\\end{table*}" in tex  # 15 columns: both columns of a paper
    assert "\\label{tab:sweep}" in tex
    caption = tex[tex.index("\\caption{"):tex.index("\\label")]
    assert "table-" not in caption and ".md" not in caption and ".csv" not in caption  # no file names
    stats_tex = (store.folder / "table-all-single.tex").read_text()
    assert "\\label{tab:sweep-all-single}" in stats_tex and "p $<$ 0.05" in stats_tex
    csv = pd.read_csv(store.folder / "table-all-single.csv")
    assert {"rank1_delta_ci_low", "rank1_delta_ci_high", "rank1_delta_p", "rank1_ci_low", "rank1_gallery_std"} \
        <= set(csv.columns)
    text = render_terminal(report.summaries)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80 and any("R1" in line for line in lines) and "mclnet" in text
    assert any(line.split() == ["±", "1.00"] * 3 + ["±", "0.00"] * 2 for line in lines)  # each mean's sd below it


def test_paper_csv_holds_numbers_pandas_reads_back(tmp_path):
    """table.csv: mean, sd and n per (protocol, metric) as numbers and the mark apart; the means and
    sds are those of the seeds (40/41/42 -> 41, sd 1)."""
    records = []
    for seed, e in enumerate([0.3, -0.2, 0.1, -0.4, 0.2, 0.0]):
        records += [_record("agw", seed, 40.0 + e, 30.0), _record("mclnet", seed, 46.0 - e, 31.0 + seed)]
    store = _store(tmp_path, records)
    write_report(store.folder, plots=False, published=None)
    csv = pd.read_csv(store.folder / "table.csv")
    assert csv["method"].tolist() == ["agw", "mclnet"] and csv["n"].tolist() == [6, 6]
    for column in ("all-single.rank1.mean", "all-single.rank1.sd", "all-single.mAP.mean", "all-single.rank1.n"):
        assert pd.api.types.is_numeric_dtype(csv[column]), column
    agw = [40.0 + e for e in (0.3, -0.2, 0.1, -0.4, 0.2, 0.0)]
    assert csv.loc[0, "all-single.rank1.mean"] == pytest.approx(sum(agw) / 6)
    assert csv.loc[0, "all-single.rank1.sd"] == pytest.approx(float(np.std(agw, ddof=1)))
    assert csv.loc[1, "all-single.mAP.mean"] == pytest.approx(33.5) and csv.loc[1, "all-single.rank1.n"] == 6
    assert csv["all-single.rank1.mark"].fillna("").tolist() == ["", "best"]  # 6 pairs, all mclnet ahead


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_fewer_than_six_seeds_mark_nothing_and_the_caption_says_what_n_allows(tmp_path, seeds):
    """The exact sign-flip test's smallest p with n pairs is 2/2^n: 0.0625 at n = 5, so even a gap
    every seed agrees on cannot be significant; at n = 6 (0.031) it can."""
    records = []
    for seed in range(seeds):
        records += [_record("agw", seed, 40.0 + 0.1 * seed, 30.0), _record("mclnet", seed, 50.0 + 0.2 * seed, 40.0)]
    report = write_report(_store(tmp_path, records).folder, baseline="agw", plots=False)
    s = report.summaries[0]
    assert best_marks(s, "rank1") == ["", ""]
    cells = paper_frame([s])[("SYSU all", "Rank-1")].tolist()
    assert not any("†" in c or "**" in c for c in cells)
    caption = report.footer.replace("\n", " ")
    smallest = 2 / 2 ** seeds
    assert f"With n = {seeds} seeds no difference can be significant" in caption
    assert f"2/{2 ** seeds} = {smallest:.3g}" in caption and "Bold: best" not in caption
    assert smallest > 0.05
    assert not statistics_frame(s)["Δ"].str.endswith("*").any()


def test_six_seeds_can_mark_the_best(tmp_path):
    records = []
    for seed in range(6):
        records += [_record("agw", seed, 40.0 + 0.1 * seed, 30.0), _record("mclnet", seed, 50.0 + 0.2 * seed, 40.0)]
    report = write_report(_store(tmp_path, records).folder, plots=False)
    assert best_marks(report.summaries[0], "rank1") == ["", "best"]
    assert "Bold: best" in report.footer.replace("\n", " ") and "no difference can be" not in report.footer


def test_published_numbers_only_beside_real_data(tmp_path):
    published = {"all-single": {"mclnet": {"rank1": 65.4}}}
    real = write_report(_two_protocols(tmp_path).folder, protocols=["all-single"], published=published, plots=False)
    assert "mclnet (published)" in real.markdown and "65.40" in real.markdown
    synthetic = _two_protocols(tmp_path / "syn", dataset="synthetic")
    report = write_report(synthetic.folder, protocols=["all-single"], published=published, plots=False)
    assert "65.40" not in report.markdown and "not shown beside rows measured on synthetic" in report.markdown


def test_published_rows_name_where_their_numbers_come_from(tmp_path):
    from harness.published import published_by_protocol
    from harness.sweep import load_spec

    spec = load_spec("benchmarks/paper_deen_llcm.yaml")
    published = published_by_protocol(spec.table["published"], ["ir2vis", "vis2ir"])
    records = [_record("deen", seed, 50.0 + seed, 55.0, protocol=protocol, dataset="llcm")
               for seed in range(2) for protocol in ("ir2vis", "vis2ir")]
    report = write_report(_store(tmp_path, records).folder, published=published, plots=False)
    frame = paper_frame(report.summaries, published=published)
    row = frame[frame[("", "method")] == "deen (published)"].iloc[0]
    # the LLCM rows are the README's update of the paper's table, and the table says so
    assert row[("", "runs")] == "README LLCM update"
    assert row[("LLCM IR→VIS", "Rank-1")] == "55.52" and row[("LLCM VIS→IR", "mAP")] == "55.52"
    assert "| deen (published) | README LLCM update |" in report.markdown
    sysu = published_by_protocol({"rows": {"mclnet": {"all-single": "mclnet.sysu_all"}}}, ["all-single"])
    assert "source" not in sysu["all-single"]["mclnet"]  # a setting without a label: the runs column says "paper"


def test_warns_when_rows_come_from_different_versions_or_devices(tmp_path):
    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0), _record("agw", 1, 41.0, 30.0, torch="2.15.0",
                                                                       device="NVIDIA H200")])
    report = write_report(store.folder, plots=False)
    assert any("torch 2.14.1, 2.15.0" in w for w in report.warnings)
    assert any("different devices" in w for w in report.warnings)
    assert "Warning: rows of this table come from different library versions" in report.markdown


def test_write_report_files_and_missing_store(tmp_path):
    store = _two_protocols(tmp_path)
    report = write_report(store.folder, baseline="agw")
    names = {f.name for f in report.files}
    for stem in ("cmc", "ablation", "accuracy_vs_throughput"):
        assert {f"{stem}-all-single.png", f"{stem}-all-single.pdf"} <= names
    assert {"table.md", "table.tex", "table.csv", "table-indoor-single.md"} <= names
    assert not [p for p in store.folder.iterdir() if "tmp" in p.name]
    with pytest.raises(HarnessError, match="no records.sqlite"):
        write_report(tmp_path / "missing")


# --------------------------------------------------------------------------- figures


def test_figures_ticks_titles_legends_and_never_blank(tmp_path):
    from harness.results.plots import ablation_figure, cmc_figure, throughput_figure

    s = summarise(_two_protocols(tmp_path, dataset="synthetic").dataframe())
    fig = cmc_figure(s)
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 20]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert "synthetic" in ax.get_title() and "SYSU all" in ax.get_title()
    assert any("n=3" in t.get_text() and "±1 sd" in t.get_text() for t in ax.get_legend().get_texts())
    fig = ablation_figure(s)
    ax = fig.axes[0]
    fig.canvas.draw()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x0 >= ax.get_window_extent().x1  # legend outside the bars
    assert "n=3" in ax.get_title()
    fig = throughput_figure(s)
    assert "cpu (x86_64, 2 threads)" in fig.axes[0].get_xlabel()
    empty = summarise(_store(tmp_path / "e", [_record("agw", 0, 40.0, 30.0, train_img_per_s=float("nan"),
                                                      cmc="[]")]).dataframe())
    for figure in (throughput_figure(empty), cmc_figure(empty)):
        assert any("missing" in t.get_text() for t in figure.axes[0].texts)


def test_throughput_figure_marks_mixed_devices(tmp_path):
    from harness.results.plots import throughput_figure

    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0), _record("agw", 1, 41.0, 30.0, device="NVIDIA H200"),
                              _record("mclnet", 0, 45.0, 33.0)])
    fig = throughput_figure(summarise(store.dataframe()))
    assert "MIXED DEVICES" in fig.axes[0].get_xlabel()


def test_throughput_figure_shows_95_intervals_and_no_front_through_noise(tmp_path):
    """Bars are the t CIs of the means (3 seeds: t 4.3027). agw is faster but less accurate than
    mclnet: with agw's throughput 150/250/350 img/s its interval covers mclnet's 100-102, so no
    Pareto front is drawn and the figure says why; at 249/250/251 the front is drawn."""
    from harness.results.plots import resolved_front, throughput_figure

    def figure(speeds, name):
        records = []
        for seed in range(3):
            records += [_record("agw", seed, 40.0, 35.0, train_img_per_s=speeds[seed]),
                        _record("mclnet", seed, 48.0, 43.0 + seed)]
        return throughput_figure(summarise(_store(tmp_path, records, name=name).dataframe())).axes[0]

    ax = figure([150.0, 250.0, 350.0], "noisy")
    assert "Pareto front" not in [line.get_label() for line in ax.get_lines()]
    assert any("no Pareto front" in t.get_text() for t in ax.texts)
    half = T975[2] * 100.0 / math.sqrt(3)  # sd of 150, 250, 350 is 100
    xbar = ax.containers[0].lines[2][0].get_segments()[0]
    assert xbar[0][0] == pytest.approx(250 - half, abs=0.01) and xbar[1][0] == pytest.approx(250 + half, abs=0.01)
    ax = figure([249.0, 250.0, 251.0], "apart")
    [front] = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert front.get_xdata().tolist() == [101.0, 250.0] and front.get_ydata().tolist() == [44.0, 35.0]
    assert not any("no Pareto front" in t.get_text() for t in ax.texts)

    points = np.array([[100.0, 40.0], [200.0, 30.0], [150.0, 20.0]])  # the third is dominated
    apart = np.array([[[95, 105], [39, 41]], [[195, 205], [29, 31]], [[140, 160], [19, 21]]], dtype=float)
    assert resolved_front(points, apart).tolist() == [0, 1]
    noisy = apart.copy()
    noisy[1, 0] = [-5.9, 242.9]  # a throughput CI spanning the other point's
    assert resolved_front(points, noisy) is None
    noisy = apart.copy()
    noisy[1, 1] = [np.nan, np.nan]  # one run: no interval, nothing resolved
    assert resolved_front(points, noisy) is None


def test_spec_table_block_refuses_unknown_grouping_keys_and_metrics():
    from harness.sweep import parse_spec
    from tests.conftest import TINY

    spec = parse_spec({"name": "s", "base": TINY, "grid": {"model.backbone": ["test_resnet"]},
                       "table": {"group_by": ["method", "model.backbone"], "metrics": ["rank1", "mAP"]}})
    assert spec.table["group_by"] == ["method", "model.backbone"]
    with pytest.raises(ConfigError, match="group_by: unknown key 'model.backbon'; did you mean model.backbone"):
        parse_spec({"name": "s", "base": TINY, "table": {"group_by": ["model.backbon"]}})
    with pytest.raises(ConfigError, match="group_by: unknown key 'seed'"):
        parse_spec({"name": "s", "base": TINY, "table": {"group_by": ["seed"]}})
    with pytest.raises(HarnessError, match="metrics: unknown metric 'rank2'"):
        parse_spec({"name": "s", "base": TINY, "table": {"metrics": ["rank2"]}})


def test_records_of_several_node_folders_merge_into_one_table(tmp_path, capsys):
    from harness.cli import main

    # node A ran seeds 0-1, node B seeds 2-3 and (again) seed 1 of agw, with the same numbers at another
    # speed: that trial counts once
    _store(tmp_path, [_record("agw", 0, 40.0, 30.0), _record("agw", 1, 44.0, 32.0)], name="node-a")
    _store(tmp_path, [_record("agw", 2, 42.0, 34.0), _record("agw", 3, 46.0, 36.0),
                      _record("agw", 1, 44.0, 32.0, train_img_per_s=55.0, device="cuda (H100)")], name="node-b")
    out = tmp_path / "merged"
    assert main(["table", str(tmp_path / "node-a"), str(tmp_path / "node-b"), "--out", str(out), "--no-plots"]) == 0
    rows = pd.read_csv(out / "table-all-single.csv").set_index("method")
    assert rows.loc["agw", "rank1_n"] == 4
    assert rows.loc["agw", "rank1"] == pytest.approx((40 + 44 + 42 + 46) / 4)
    assert not (tmp_path / "node-a" / "table.md").exists()  # sources are only read
    assert main(["table", str(tmp_path / "node-a"), str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.parametrize("differs", [{"rank5": 32.5}, {"rank10": 50.0}, {"status": "failed", "protocol": None},
                                     {"mINP_std": 0.25}])
def test_a_trial_with_other_numbers_in_another_folder_is_refused_in_either_order(tmp_path, capsys, differs):
    from harness.cli import main

    _store(tmp_path, [_record("agw", 0, 40.0, 30.0), _record("agw", 1, 44.0, 32.0)], name="node-a")
    _store(tmp_path, [_record("agw", 1, 44.0, 32.0, **differs)], name="node-b")
    a, b = str(tmp_path / "node-a"), str(tmp_path / "node-b")
    for folders in ([a, b], [b, a]):
        assert main(["table", *folders, "--out", str(tmp_path / "merged"), "--no-plots"]) == 2
        err = capsys.readouterr().err
        assert "agw-1-test_resnet" in err and a in err and b in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()


def test_search_table_names_each_sampled_value_once_rounded_and_fits_the_terminal(tmp_path):
    """A search's records carry `param_<key>` copies of the sampled values beside their config:
    tables show each sampled key once, at 4 significant digits, and the terminal keeps them."""
    from harness.results.records import sampled_params

    lrs = [0.011438553337926058, 0.0020007364522262447, 0.041]
    sigmas = [1.4496108060649282, 13.97321, 0.92052917]
    records = []
    for i, (lr, sigma) in enumerate(zip(lrs, sigmas)):
        cfg = {"method": "mclnet", "seed": 0, "model": {"backbone": "test_resnet"},
               "data": {"dataset": "sysu", "trial": 1}, "train": {"lr": lr}, "loss": {"ica": {"sigma": sigma}}}
        status = "pruned" if i == 2 else "ok"
        records.append(_record("mclnet", 0, 40.0 + i, 45.0 + i, trial_key=f"t{i}", config=json.dumps(cfg),
                               status=status, **sampled_params({"train.lr": lr, "loss.ica.sigma": sigma})))
    store = _store(tmp_path, records)
    report = write_report(store.folder, plots=False)
    summary = report.summaries[0]
    assert sorted(summary.key_columns) == ["loss.ica.sigma", "method", "train.lr"]
    frame = statistics_frame(summary)
    assert not [c for c in frame.columns if c.startswith("param_")]
    assert list(frame.drop_duplicates("train.lr")["train.lr"]) == ["0.01144", "0.002001", "0.041"]
    assert list(frame.drop_duplicates("loss.ica.sigma")["loss.ica.sigma"]) == ["1.45", "13.97", "0.9205"]
    text = render_terminal(report.summaries)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "method: mclnet" in text  # the same label on every row goes into the title
    for value in ("0.01144", "0.002001", "13.97", "0.9205", "pruned"):
        assert value in text
    assert "sigma" in text and "lr" in text  # the swept keys, shortened, head their columns


def _search_records():
    """Four trials of a search on val_mAP: two finished, one pruned after epoch 2, one failed."""
    from harness.results.records import objectives_field, sampled_params

    rows = []
    for i, (lr, status, val) in enumerate([(0.011438553, "ok", 31.5), (0.0020007, "pruned", None),
                                           (0.041, "ok", 44.25), (0.02, "failed", None)]):
        cfg = {"method": "mclnet", "seed": 0, "model": {"backbone": "test_resnet"},
               "data": {"dataset": "synthetic", "trial": 1}, "train": {"lr": lr}}
        extra = {"trial_key": f"t{i}", "trial_id": str(i), "config": json.dumps(cfg), "status": status,
                 "protocol": "val" if status == "ok" else None, "epochs": 10 if status == "ok" else 2,
                 **objectives_field({"val_mAP": "maximize"}), **sampled_params({"train.lr": lr})}
        if status == "ok":
            extra["val_mAP"] = val
        if status == "pruned":
            extra.update(failure="pruned after epoch 2 (validation 12.50)", val_history=json.dumps({"1": 9.0,
                                                                                                  "2": 12.5}))
        if status == "failed":
            extra["failure"] = "RuntimeError: boom"
        rows.append(_record("mclnet", 0, 40.0, val or 0.0, **extra))
    return rows


def test_search_table_shows_objective_sampled_values_and_pruning_state(tmp_path):
    store = _store(tmp_path, _search_records())
    report = write_report(store.folder, protocols=["all-single"], baseline="agw")
    assert [f.name for f in report.files] == ["table.md", "table.csv"]  # no test-protocol tables, no CMC
    table = pd.read_csv(store.folder / "table.csv")
    assert table["trial"].tolist() == [2, 0, 1, 3]  # finished best first, then pruned, then failed
    assert table["state"].tolist() == ["ok", "ok", "pruned", "failed"]
    assert table["val_mAP"].tolist()[:2] == [44.25, 31.5] and table["val_mAP"].iloc[2:].isna().all()
    assert table["last_reported"].iloc[2] == 12.5 and table["epochs"].tolist()[:3] == [10, 10, 2]
    assert table["chosen"].tolist() == [True, False, False, False]
    assert table["train.lr"].tolist() == pytest.approx([0.041, 0.011438553, 0.0020007, 0.02])
    md = (store.folder / "table.md").read_text()
    assert "| 1 | mclnet | 0.002001 | pruned @2 | 2 | (12.50) |  |" in md
    assert "| 2 | mclnet | 0.041 | ok | 10 | 44.25 | ✓ |" in md
    assert "test protocols were not evaluated" in md and "Rank-1" not in md
    lines = report.terminal.splitlines()
    assert max(map(len, lines)) <= 80 and "method: mclnet" in report.terminal and "val mAP" in report.terminal


def _regdb_record(method, split, rank1, mAP, seed=0, **config):
    cfg = {"method": method, "seed": seed, "model": {"backbone": "resnet50"},
           "data": {"dataset": "regdb", "trial": split}, **config}
    return _record(method, seed, rank1, mAP, protocol="v2t", dataset="regdb", backbone="resnet50",
                   trial_key=f"{method}-{seed}-{split}-{len(config)}", config=json.dumps(cfg, sort_keys=True))


def test_regdb_splits_are_replicates_one_row_with_the_mean_over_the_ten_splits(tmp_path):
    """The published RegDB number is the mean over its ten splits (data.trial 1..10): ten records of
    one configuration make one row with n = 10, and deltas pair the splits."""
    agw = [60.0, 62.5, 58.0, 61.0, 59.5, 63.0, 60.5, 57.0, 64.0, 61.5]
    gain = [1.0, 2.0, 0.5, 1.5, 3.0, 2.5, 1.0, 0.0, 2.0, 1.5]
    store = _store(tmp_path, [_regdb_record(m, split, value, value - 5)
                              for split, (a, g) in enumerate(zip(agw, gain), start=1)
                              for m, value in (("agw", a), ("mclnet", a + g))])
    s = add_deltas(summarise(store.dataframe(), protocol="v2t"), "agw")
    assert list(s.rows["method"]) == ["agw", "mclnet"] and list(s.rows["n"]) == [10, 10]
    rows = s.rows.set_index("method")
    assert rows.loc["agw", "rank1"] == pytest.approx(607.0 / 10)
    assert rows.loc["agw", "mAP"] == pytest.approx(607.0 / 10 - 5)
    assert rows.loc["agw", "rank1_std"] == pytest.approx(np.std(agw, ddof=1))
    assert rows.loc["mclnet", "rank1_delta"] == pytest.approx(15.0 / 10) and rows.loc["mclnet", "rank1_delta_n"] == 10
    assert "data.trial" not in s.key_columns


def test_a_record_stored_before_a_key_was_added_reads_as_holding_its_default(tmp_path):
    # seeds 0-1 recorded before mcm.confusion_variant existed, seed 2 after (at its default): one row, n = 3
    old = [_record("mclnet", seed, 40.0 + seed, 30.0) for seed in (0, 1)]
    cfg = json.loads(old[0]["config"]) | {"seed": 2, "mcm": {"confusion_variant": "updated"}}
    new = _record("mclnet", 2, 42.0, 30.0, config=json.dumps(cfg, sort_keys=True))
    variant = _record("mclnet", 0, 90.0, 30.0, trial_key="variant",
                      config=json.dumps(cfg | {"seed": 0, "mcm": {"confusion_variant": "authors-code"}}))
    s = summarise(_store(tmp_path, [*old, new, variant]).dataframe())
    assert list(s.rows["n"]) == [3, 1] and s.rows["rank1"].iloc[0] == pytest.approx(41.0)
    assert list(s.rows["mcm.confusion_variant"]) == ["updated", "authors-code"]
