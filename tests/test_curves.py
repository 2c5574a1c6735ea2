"""Training curves: one row per epoch in the trial result, the store and TensorBoard event files."""

import math

import pytest

from harness.provenance import config_key
from harness.trial import run_trial


def expected_lr(base: float, epoch: int, warmup: int, milestones: list[int], gamma: float) -> float:
    """The AGW schedule written out: linear warm-up, then x gamma at each milestone (0-based epochs)."""
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    return base * gamma ** sum(epoch >= m for m in milestones)


def test_rows_hold_every_term_learning_rate_speed_and_validation(tiny_config):
    cfg = tiny_config(method="mclnet", **{"train.epochs": 3, "train.warmup_epochs": 2, "train.milestones": [2],
                                          "data.val_identities": 3})
    result = run_trial(cfg)
    assert result.status == "ok"
    rows = result.curves
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        for tag in ("loss/ce", "loss/wrt", "loss/mcm", "loss/mcm_discriminator", "loss/ica", "loss/cca",
                    "loss/total", "lr/backbone", "lr/head", "lr/centers", "lr/mcm", "train_img_per_s",
                    "val/mAP", "val/rank1"):
            assert tag in row and math.isfinite(row[tag]), tag
        terms = sum(row[f"loss/{t}"] for t in ("ce", "wrt", "mcm", "ica", "cca"))
        assert row["loss/total"] == pytest.approx(terms, rel=1e-6)  # the discriminator loss is not trained on
        assert row["train_img_per_s"] > 0
    t = cfg.train
    for row in rows:
        epoch = row["epoch"] - 1
        assert row["lr/backbone"] == pytest.approx(expected_lr(t.lr, epoch, 2, [2], t.gamma))
        assert row["lr/head"] == pytest.approx(expected_lr(t.head_lr, epoch, 2, [2], t.gamma))
    assert rows[-1]["val/mAP"] == pytest.approx(result.records[0]["val_mAP"])  # the last validation is reused


def test_a_search_trial_never_loads_a_test_image(tiny_config, monkeypatch):
    """test_protocols=False: the trial is scored on its validation protocol (the last epoch's
    validation, shared with the curves) and not one test image is decoded."""
    import harness.trial
    from harness.data.registry import load_dataset

    cfg = tiny_config(method="agw", **{"data.val_identities": 3})
    loaded: set[str] = set()
    load_images = harness.trial.load_images

    def recording(paths, *args, **kwargs):
        loaded.update(paths)
        return load_images(paths, *args, **kwargs)

    monkeypatch.setattr(harness.trial, "load_images", recording)
    result = run_trial(cfg, test_protocols=False)
    assert result.status == "ok" and [r["protocol"] for r in result.records] == ["val"]
    bundle = load_dataset(cfg.data, seed=cfg.seed)
    test_images = {p for protocol in bundle.protocols.values() for split in (protocol.query, protocol.gallery)
                   for p in split.paths}
    validation = set(bundle.validation.query.paths) | set(bundle.validation.gallery.paths)
    assert validation <= loaded and not loaded & test_images
    [record] = result.records
    assert record["mAP"] == pytest.approx(result.curves[-1]["val/mAP"]) == pytest.approx(record["val_mAP"])
    assert record["infer_img_per_s"] > 0
    loaded.clear()
    tested = run_trial(cfg)  # the default evaluates every test protocol
    assert {r["protocol"] for r in tested.records} == set(bundle.protocols) and loaded & test_images


def test_rows_survive_a_resumed_trial(tiny_config, tmp_path):
    cfg = tiny_config(method="agw")
    whole = run_trial(cfg).curves

    def stop_after_first_epoch(epoch, losses, validate):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, workdir=tmp_path, on_epoch=stop_after_first_epoch)
    resumed = run_trial(cfg, workdir=tmp_path).curves
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(whole, resumed):
        assert {k: v for k, v in a.items() if k != "train_img_per_s"} == \
            {k: v for k, v in b.items() if k != "train_img_per_s"}


def test_sweep_stores_curves_and_tensorboard_reads_them_back(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.results import ResultStore
    from harness.runner.common import execute_trial

    store = ResultStore(tmp_path / "sweep")
    cfgs = [tiny_config(method="agw+mcm", seed=seed) for seed in (0, 1)]
    keys = [execute_trial(cfg, store, sweep="sweep", backend="local", trial_id=str(i), keep_model=False).key
            for i, cfg in enumerate(cfgs)]
    curves = store.curves()
    assert sorted(curves["trial_key"].unique()) == sorted(keys)
    assert curves.groupby("trial_key")["epoch"].apply(list).tolist() == [[1, 2], [1, 2]]
    assert {"loss/ce", "loss/wrt", "loss/mcm", "loss/mcm_discriminator", "lr/backbone", "lr/mcm"} <= set(curves)
    assert not list((tmp_path / "sweep" / "checkpoints").glob("*"))  # nothing left beside the checkpoints

    folders = sorted((tmp_path / "sweep" / "tensorboard").iterdir())
    assert [f.name for f in folders] == sorted(f"agw+mcm seed={c.seed} [{k}]" for c, k in zip(cfgs, keys))
    for cfg, key in zip(cfgs, keys):
        events = EventAccumulator(str(tmp_path / "sweep" / "tensorboard" / f"agw+mcm seed={cfg.seed} [{key}]"))
        events.Reload()
        assert {"loss/ce", "loss/mcm_discriminator", "loss/total", "lr/backbone", "lr/mcm",
                "train_img_per_s"} <= set(events.Tags()["scalars"])
        scalars = events.Scalars("loss/ce")
        assert [s.step for s in scalars] == [1, 2]  # one point per epoch
        mine = curves[curves["trial_key"] == key]
        assert [s.value for s in scalars] == pytest.approx(mine["loss/ce"].tolist(), rel=1e-6)

    from harness.results import write_report

    files = write_report(tmp_path / "sweep").files
    assert tmp_path / "sweep" / "loss_curves.png" in files and tmp_path / "sweep" / "loss_curves.pdf" in files


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def test_tensorboard_follows_a_running_trial_then_gets_test_metrics_and_hparams(tiny_config, tmp_path):
    """After each epoch the trial's TensorBoard run already holds that epoch (watched from inside the
    trial); once stored, `test/<protocol>/rank1|mAP|mINP` equal the records and an HParams session
    names the swept keys with this trial's values and the final metrics."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    from harness.results import ResultStore
    from harness.runner.common import execute_trial

    cfg = tiny_config(method="agw", **{"train.epochs": 3, "data.val_identities": 3, "data.modes": ["all", "indoor"]})
    folder = tmp_path / "sweep" / "tensorboard" / f"agw train.lr=0.01 [{config_key(cfg)}]"
    seen = []

    def watch(epoch, losses, validate):
        events = _events(folder)
        seen.append([s.step for s in events.Scalars("loss/ce")])
        assert not [t for t in events.Tags()["scalars"] if t.startswith("test/")]  # not before the end

    result = execute_trial(cfg, ResultStore(tmp_path / "sweep"), sweep="sweep", backend="local", trial_id="0",
                           on_epoch=watch, keep_model=False, extra={"label": "agw train.lr=0.01"},
                           hparams={"method": "agw", "train.lr": 0.01, "train.milestones": [1]})
    assert seen == [[1], [1, 2], [1, 2, 3]]  # live: each epoch visible while the trial still runs
    events = _events(folder)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    for record in result.records:
        for name in ("rank1", "mAP", "mINP"):
            [point] = events.Scalars(f"test/{record['protocol']}/{name}")
            assert point.step == 3 and point.value == pytest.approx(record[name], rel=1e-6)
    assert {r["protocol"] for r in result.records} == {"all-single", "indoor-single"}
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [h.name for h in experiment.hparam_infos] == ["method", "train.lr", "train.milestones"]
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"test/all-single/mAP", "test/indoor-single/rank1", "val/mAP"} <= metric_tags
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["method"].string_value == "agw" and start.hparams["train.lr"].number_value == 0.01
    assert start.hparams["train.milestones"].string_value == "[1]"


def test_loss_curves_figure_draws_the_mean_over_seeds_per_method():
    import numpy as np
    import pandas as pd

    from harness.figures.curves import loss_curves_figure

    records = pd.DataFrame({"trial_key": ["a", "b", "c", "c"], "method": ["agw", "agw", "mclnet", "mclnet"]})
    curves = pd.DataFrame({"trial_key": ["a", "a", "b", "b", "c", "c"], "epoch": [1, 2, 1, 2, 1, 2],
                           "loss/ce": [4.0, 3.0, 2.0, 1.0, 5.0, 4.5], "loss/total": [6.0, 5.0, 4.0, 3.0, 9.0, 8.0],
                           "loss/ica": [np.nan, np.nan, np.nan, np.nan, 0.5, 0.25], "lr/backbone": [0.1] * 6})
    fig = loss_curves_figure(curves, records)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["ce", "ica", "total"]  # loss terms only, the sum last
    ce = {line.get_label(): line.get_ydata().tolist() for line in panels[0].get_lines()}
    assert ce == {"agw": [3.0, 2.0], "mclnet": [5.0, 4.5]}  # mean over the two agw seeds
    assert [line.get_label() for line in panels[1].get_lines()] == ["mclnet"]


def test_loss_curves_give_each_method_one_colour_in_every_panel_and_a_legend_entry():
    """The first panel (cca) holds only mclnet: the legend still names every method, and a colour
    stands for the same method in every panel."""
    import pandas as pd

    from harness.figures.curves import loss_curves_figure

    methods = ["agw", "agw+mcm", "agw+mcm+center", "agw+mcm+ica", "mclnet", "mclnet-no-mcm"]
    records = pd.DataFrame({"trial_key": methods, "method": methods})
    rows = []
    for i, m in enumerate(methods):
        for epoch in (1, 2):
            row = {"trial_key": m, "epoch": epoch, "loss/ce": 5.0 - i - epoch, "loss/total": 9.0 - i - epoch}
            if m in ("mclnet", "mclnet-no-mcm"):
                row["loss/cca"] = 0.5 * i
            if "mcm" in m and "no-mcm" not in m:
                row["loss/mcm"] = 0.1 * i
            rows.append(row)
    fig = loss_curves_figure(pd.DataFrame(rows), records)
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == methods
    legend_colours = {t.get_text(): h.get_color() for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert len(set(legend_colours.values())) == len(methods)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["cca", "ce", "mcm", "total"]
    for ax in panels:
        for line in ax.get_lines():
            assert line.get_color() == legend_colours[line.get_label()], (ax.get_title(), line.get_label())
    assert [line.get_label() for line in panels[0].get_lines()] == ["mclnet", "mclnet-no-mcm"]


def test_a_pruned_trial_keeps_the_curves_of_the_epochs_it_trained(tiny_config, tmp_path):
    """Stopped after its first epoch the way a pruner stops it (an exception from the epoch
    callback), a trial's stored record comes with that epoch's curves, in the store and in
    TensorBoard, and nothing is left in the checkpoint folder."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.results import ResultStore
    from harness.runner.common import execute_trial, store_pruned

    class Stop(Exception):
        pass

    def stop_after_first_epoch(epoch, value=None, *args, **kwargs):
        raise Stop

    store = ResultStore(tmp_path / "sweep")
    cfg = tiny_config(method="agw", **{"train.epochs": 3, "data.val_identities": 3})
    started = time.time()
    with pytest.raises(Stop):
        execute_trial(cfg, store, sweep="sweep", backend="optuna", trial_id="0", on_epoch=stop_after_first_epoch,
                      passthrough=(Stop,), keep_model=False)
    assert list((tmp_path / "sweep" / "checkpoints").glob("*.curves.json"))  # the rows wait beside the checkpoint
    store_pruned(store, cfg, history={0: 12.5}, info={"label": "agw lr=0.01"}, started=started)

    [record] = store.dataframe().to_dict("records")
    assert record["status"] == "pruned" and record["failure"] == "pruned after epoch 1 (validation 12.50)"
    curves = store.curves()
    assert curves["trial_key"].tolist() == [record["trial_key"]] and curves["epoch"].tolist() == [1]
    assert {"loss/ce", "loss/wrt", "lr/backbone", "val/mAP"} <= set(curves)
    assert not list((tmp_path / "sweep" / "checkpoints").iterdir())
    events = EventAccumulator(str(tmp_path / "sweep" / "tensorboard" / f"agw lr=0.01 [{record['trial_key']}]"))
    events.Reload()
    [point] = events.Scalars("loss/ce")
    assert point.step == 1 and point.value == pytest.approx(curves["loss/ce"].iloc[0], rel=1e-6)
