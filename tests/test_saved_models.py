"""Saved models: weights as safetensors + card, reload without pickle, eval on other data, extract."""

import json

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.errors import ConfigError, InputError
from harness.saved_models import (
    TrainedModel,
    evaluation_config,
    load_method,
    model_files,
    read_model,
    save_model,
)


def _trained_like_method(cfg):
    """A network whose weights and BN statistics are far from their initial values."""
    from methods import create_method

    torch.manual_seed(3)
    method = create_method(cfg, 7, 4)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method.train()
    with torch.no_grad():
        for _ in range(2):
            method.test_features(torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 0, 1]))
    return method.eval()


def test_save_and_reload_gives_identical_test_features(tiny_config, tmp_path):
    cfg = tiny_config(method="mclnet")
    method = _trained_like_method(cfg)
    weights = save_model(tmp_path, "abc123", TrainedModel(method, cfg, 7, 4, "synthetic"), info={"sweep": "s"})
    card = json.loads(model_files(tmp_path, "abc123")[1].read_text())
    assert card["trial_key"] == "abc123" and card["num_classes"] == 7 and card["num_cameras"] == 4
    assert card["config"] == cfg.to_dict() and "torch" in card["versions"] and "safetensors" in card["versions"]
    # safetensors: an 8-byte little-endian header length, then a JSON header (no pickle opcodes)
    raw = weights.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["trial_key"] == "abc123"

    saved = read_model(weights.with_suffix(".json"))  # the card names the model as well
    # pretrained weights named by the card are neither needed nor fetched: the saved weights replace them
    loaded = load_method(saved, saved.config.with_overrides({"model.pretrained": "imagenet",
                                                             "model.pretrained_file": "/nowhere/resnet.pth"}))
    x = torch.randn(6, 3, 64, 32)
    modality = torch.tensor([0, 0, 0, 1, 1, 1])
    with torch.inference_mode():
        assert torch.equal(method.test_features(x, modality), loaded.test_features(x, modality))
    assert not any(p.is_set_to(q) for p, q in zip(method.parameters(), loaded.parameters()))


def test_bad_model_paths_and_overrides_are_input_errors(tiny_config, tmp_path):
    with pytest.raises(InputError, match="no saved model"):
        read_model(tmp_path / "missing.safetensors")
    cfg = tiny_config(method="agw")
    save_model(tmp_path, "k", TrainedModel(_trained_like_method(cfg), cfg, 7, 4, "synthetic"))
    saved = read_model(tmp_path / "k")
    with pytest.raises(ConfigError, match="model.backbone"):
        evaluation_config(saved, {"model.backbone": "resnet18"})
    assert evaluation_config(saved, {"data.gallery_trials": 1}).data.gallery_trials == 1
    card = json.loads((tmp_path / "k.json").read_text())
    (tmp_path / "k.json").write_text(json.dumps({**card, "num_classes": 9}))
    with pytest.raises(InputError, match="do not fit"):  # classifier of 9 classes, weights of 7
        load_method(read_model(tmp_path / "k"))
    (tmp_path / "k.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="unreadable weights file"):
        load_method(saved)


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory):
    """One tiny trial run through `vireid run`, which keeps its model."""
    folder = tmp_path_factory.mktemp("runs")
    args = ["run", "--results-dir", str(folder), "--name", "tiny", "--quiet",
            "--set", "model.backbone=test_resnet", "--set", "model.non_local=false", "--set", "method=agw",
            "--set", "data.height=64", "--set", "data.width=32", "--set", "data.modes=[all]",
            "--set", "data.gallery_trials=2", "--set", "data.synthetic.num_identities=16",
            "--set", "data.synthetic.images_per_camera=2", "--set", "data.synthetic.height=64",
            "--set", "data.synthetic.width=32", "--set", "train.epochs=2", "--set", "train.iters_per_epoch=2",
            "--set", "train.num_identities=4", "--set", "train.images_per_modality=2",
            "--set", "train.warmup_epochs=1", "--set", "train.milestones=[1]", "--set", "train.device=cpu"]
    assert main(args) == 0
    return folder / "tiny"


def test_run_keeps_the_final_model_and_eval_reproduces_its_records(trained_sweep, tmp_path):
    from harness.results import ResultStore

    models = sorted((trained_sweep / "models").glob("*.safetensors"))
    assert len(models) == 1
    trial = ResultStore(trained_sweep).dataframe()
    assert models[0].stem == trial["trial_key"].iloc[0]
    assert main(["eval", str(models[0]), "--results-dir", str(tmp_path), "--quiet"]) == 0
    evaluated = ResultStore(tmp_path / "eval").dataframe()
    assert list(evaluated["model_key"]) == [models[0].stem]
    for metric in ("rank1", "mAP", "mINP"):  # same weights, same data: the trial's own numbers
        assert evaluated[metric].iloc[0] == pytest.approx(trial[metric].iloc[0], abs=1e-9)


def test_eval_on_another_dataset_layout_with_reranking(trained_sweep, tmp_path, monkeypatch):
    import harness.trial
    from harness.results import ResultStore

    seen = []
    evaluate = harness.trial.evaluate_trials

    def spy(*args, rerank=None, **kwargs):
        seen.append((rerank.enabled, rerank.k1))
        return evaluate(*args, rerank=rerank, **kwargs)

    monkeypatch.setattr(harness.trial, "evaluate_trials", spy)

    model = next((trained_sweep / "models").glob("*.safetensors"))
    regdb = tmp_path / "regdb"
    assert main(["data", "synth", "--layout", "regdb", str(regdb), "--identities", "12",
                 "--height", "64", "--width", "32"]) == 0
    common = [str(model), "--results-dir", str(tmp_path), "--quiet", "--set", "data.dataset=regdb",
              "--set", f"data.root={regdb}", "--set", "data.gallery_trials=1"]
    assert main(["eval", *common]) == 0
    assert main(["eval", *common, "--rerank", "--set", "evaluation.rerank.k1=5"]) == 0
    df = ResultStore(tmp_path / "eval").dataframe()
    assert set(df["dataset"]) == {"regdb"} and set(df["trained_on"]) == {"synthetic"}
    assert sorted(df["rerank"].unique().tolist()) == [False, True]
    assert df["trial_key"].nunique() == 2  # the re-ranked evaluation is its own entry
    assert set(df["protocol"]) == {"v2t", "t2v"} and len(df) == 4  # RegDB's protocols, twice
    assert seen == [(False, 20), (False, 20), (True, 5), (True, 5)]  # the keys reach the ranking
    assert (tmp_path / "eval" / "table-v2t.md").is_file() and (tmp_path / "eval" / "table-t2v.md").is_file()
    # --protocol says what it does: without it every evaluated protocol is tabulated
    from harness.cli import build_parser

    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    [option] = [a for a in eval_parser._actions if "--protocol" in a.option_strings]
    assert "every protocol" in option.help and "first" not in option.help


def test_eval_refuses_network_overrides_with_exit_2(trained_sweep, capsys):
    model = next((trained_sweep / "models").glob("*.safetensors"))
    assert main(["eval", str(model), "--set", "method=mclnet", "--quiet"]) == 2
    assert "method" in capsys.readouterr().err


def test_extract_writes_features_of_every_image_under_a_folder(trained_sweep, tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for rel in ("a/1.png", "a/b/2.jpg", "3.bmp", "c/4.png", "c/5.png"):
        path = images / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(path)
    (images / "notes.txt").write_text("not an image")
    model = next((trained_sweep / "models").glob("*.safetensors"))
    out = tmp_path / "feats.npz"
    assert main(["extract", str(model), str(images), "--modality", "infrared", "--out", str(out), "--quiet",
                 "--set", "train.eval_batch_size=2"]) == 0
    data = np.load(out, allow_pickle=False)
    printed = capsys.readouterr().out
    assert f"wrote {out}: 5 infrared image(s) under {images}, {data['features'].shape[1]}-dimensional" in printed
    assert sorted(data.files) == ["features", "paths", "similarity"] and str(data["similarity"]) == "cosine"
    assert data["paths"].tolist() == ["3.bmp", "a/1.png", "a/b/2.jpg", "c/4.png", "c/5.png"]
    assert data["features"].dtype == np.float32 and data["features"].shape[0] == 5
    assert np.isfinite(data["features"]).all()
    assert not list(tmp_path.glob(".*vireid-tmp*"))
    # batches of 2 give the features of one batch of all (eval mode: no batch statistics)
    again = tmp_path / "again.npz"
    assert main(["extract", str(model), str(images), "--modality", "infrared", "--out", str(again), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(again)["features"], data["features"], rtol=1e-5, atol=1e-6)
    assert main(["extract", str(model), str(images), "--modality", "infrared", "--out", str(tmp_path / "x.csv"),
                 "--quiet"]) == 2


def test_keep_models_is_a_spec_key_and_a_flag(tiny_config, tmp_path):
    from harness.cli import build_parser
    from harness.errors import HarnessError
    from harness.provenance import config_key
    from harness.results import ResultStore
    from harness.runner.common import execute_trial
    from harness.sweep import parse_spec
    from harness.trial import TrialResult
    from methods import create_method

    assert parse_spec({"name": "s"}).keep_models is True
    assert parse_spec({"name": "s", "keep_models": False}).keep_models is False
    with pytest.raises(HarnessError, match="keep_models"):
        parse_spec({"name": "s", "keep_models": "no"})
    assert build_parser().parse_args(["sweep", "spec.yaml", "--no-models"]).no_models
    assert build_parser().parse_args(["run", "--no-models"]).no_models

    cfg = tiny_config(method="agw")

    def finished_trial(cfg, **_):
        key = config_key(cfg)
        record = {"trial_key": key, "status": "ok", "protocol": "all-single", "method": cfg.method}
        return TrialResult(key=key, status="ok", records=[record],
                           trained=TrainedModel(create_method(cfg, 5, 2), cfg, 5, 2, "synthetic"))

    for keep, folder in ((False, tmp_path / "off"), (True, tmp_path / "on")):
        execute_trial(cfg, ResultStore(folder), sweep="s", backend="local", trial_id="0", trial_fn=finished_trial,
                      keep_model=keep)
        kept = sorted(p.name for p in (folder / "models").glob("*")) if (folder / "models").exists() else []
        key = config_key(cfg)
        assert kept == ([f"{key}.json", f"{key}.safetensors"] if keep else [])


def test_eval_may_switch_the_test_feature(trained_sweep, tmp_path):
    """The weights fit both test features: --set model.test_feature=pool evaluates exactly as a
    model whose card asked for the pooled feature."""
    import shutil

    from harness.results import ResultStore

    model = next((trained_sweep / "models").glob("*.safetensors"))
    trial = ResultStore(trained_sweep).dataframe()
    assert json.loads(model.with_suffix(".json").read_text())["config"]["model"]["test_feature"] == "bn"
    assert main(["eval", str(model), "--results-dir", str(tmp_path), "--name", "switched", "--quiet",
                 "--set", "model.test_feature=pool"]) == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(model, copy / model.name)
    card = json.loads(model.with_suffix(".json").read_text())
    card["config"]["model"]["test_feature"] = "pool"
    (copy / model.with_suffix(".json").name).write_text(json.dumps(card))
    assert main(["eval", str(copy / model.name), "--results-dir", str(tmp_path), "--name", "card",
                 "--quiet"]) == 0
    switched = ResultStore(tmp_path / "switched").dataframe()
    from_card = ResultStore(tmp_path / "card").dataframe()
    for metric in ("rank1", "mAP", "mINP"):
        assert switched[metric].iloc[0] == pytest.approx(from_card[metric].iloc[0], abs=1e-12)
    assert switched["mAP"].iloc[0] != pytest.approx(trial["mAP"].iloc[0], abs=1e-9)  # not the BN feature


# ------------------------------------------------------------------ damaged cards and weights: exit 2, nothing built

def _saved(tmp_path, tiny_config):
    cfg = tiny_config(method="mclnet")
    return save_model(tmp_path, "k", TrainedModel(_trained_like_method(cfg), cfg, 7, 4, "synthetic"))


def test_eval_refuses_weights_of_another_dtype(tiny_config, tmp_path, capsys):
    """Before: floats stored as int64 were cast into the network and evaluated without a word."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    weights = _saved(tmp_path, tiny_config)
    with safe_open(str(weights), "pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    floats = sorted(k for k, v in tensors.items() if v.is_floating_point())
    save_file({k: (v * 1000).round().long() if k in floats else v for k, v in tensors.items()}, str(weights),
              metadata=metadata)
    assert main(["eval", str(weights), "--results-dir", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{len(floats)} tensor(s) of another dtype, never cast: ['{floats[0]} torch.int64 for torch.float32'" in err
    assert "Traceback" not in err


def _card_with(card, change):
    if not isinstance(change, dict):
        return change  # the whole body
    out = json.loads(json.dumps(card))
    for dotted, value in change.items():
        node = out
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return out


@pytest.mark.parametrize("change, fragment", [
    (5, "holds 5; expected a JSON object"), (None, "holds null; expected a JSON object"),
    ({"num_classes": "ten"}, "num_classes: expected an integer, got 'ten'"),
    ({"num_classes": 10**12}, "num_classes: expected a value >= 1 and <="),
    ({"num_classes": 10**400}, "num_classes: expected a value >= 1 and <="),
    ({"num_cameras": 0}, "num_cameras: expected a value >= 1"),
    ({"num_cameras": KeyError}, "missing num_cameras"),
    ({"config.data.height": 10**9}, "config.data.height: expected a value >= 1 and <="),
    ({"config.data.height": 1e9}, "config.data.height: expected an integer, got 1000000000.0"),
    ({"method": "agw"}, "contradicts itself: method 'agw', but its config names 'mclnet'"),
    ({"dataset": "regdb"}, "contradicts itself: dataset 'regdb', but its config names 'synthetic'"),
    ({"format": "vireid-model/2"}, "format 'vireid-model/2' is not accepted; a saved model's card has format "
                                   "'vireid-model/1'"),
    ({"format": "vireid-backbone/1"}, "the card of an exported backbone"),
    ({"trial_key": "other"}, "weights are those of trial 'k', its card names trial 'other'"),
])
def test_a_malformed_card_is_refused_with_exit_2(change, fragment, tiny_config, tmp_path, capsys):
    """Before: TypeError / ValueError tracebacks, terabyte allocations, or a half-used self-contradicting card."""
    weights = _saved(tmp_path, tiny_config)
    card_path = weights.with_suffix(".json")
    card_path.write_text(json.dumps(_card_with(json.loads(card_path.read_text()), change)))
    assert main(["eval", str(weights), "--results-dir", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{card_path if 'trial' not in fragment else weights}: " in err and fragment in err, err
    assert "Traceback" not in err


def test_a_card_that_does_not_fit_its_weights_allocates_nothing(tiny_config, tmp_path, monkeypatch):
    import methods

    weights = _saved(tmp_path, tiny_config)
    card_path = weights.with_suffix(".json")
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "num_classes": 900_000}))
    devices = []
    create = methods.create_method

    def spy(*args, **kwargs):
        devices.append(torch.empty(0).device.type)  # where this build would put its tensors
        return create(*args, **kwargs)

    monkeypatch.setattr(methods, "create_method", spy)
    with pytest.raises(InputError, match=r"net\.neck\.classifier\.weight \(7, \d+\) for \(900000, \d+\)"):
        load_method(read_model(weights))
    assert devices == ["meta"]  # compared with the weights on the meta device; never built for real
