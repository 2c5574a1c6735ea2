import math

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.training import lr_factor
from harness.trial import run_trial
from methods import create_method, list_methods, resolve_method

PRESETS = ["agw", "agw+mcm", "agw+mcm+center", "agw+mcm+ica", "mclnet", "mclnet-no-mcm"]


def test_registry_presets_and_switches():
    names = [m.name for m in list_methods()]
    assert [n for n in names if n in PRESETS] == PRESETS  # the family's presets in their declared order
    expected = {"agw": (False, "none", False), "agw+mcm": (True, "none", False),
                "agw+mcm+center": (True, "center", False), "agw+mcm+ica": (True, "ica", False),
                "mclnet": (True, "ica", True), "mclnet-no-mcm": (False, "ica", True)}
    for name, (mcm, center, cca) in expected.items():
        s = resolve_method(name).switches
        assert (s["mcm"], s["center"], s["cca"]) == (mcm, center, cca)
    assert resolve_method("agw+cca").switches == {"mcm": False, "center": "none", "cca": True}
    with pytest.raises(HarnessError, match="Did you mean mclnet"):
        resolve_method("mclnt")
    with pytest.raises(HarnessError, match="unknown switch 'foo'"):
        resolve_method("agw+foo")
    with pytest.raises(HarnessError, match="alternatives"):
        resolve_method("agw+center+ica")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_trains_a_few_steps(name, tiny_config):
    cfg = tiny_config(method=name)
    method = create_method(cfg, num_classes=6, num_cameras=6)
    terms = {"agw": {"ce", "wrt"}, "agw+mcm": {"ce", "wrt", "mcm"}, "agw+mcm+center": {"ce", "wrt", "mcm", "center"},
             "agw+mcm+ica": {"ce", "wrt", "mcm", "ica"}, "mclnet": {"ce", "wrt", "mcm", "ica", "cca"},
             "mclnet-no-mcm": {"ce", "wrt", "ica", "cca"}}[name]
    opt = torch.optim.SGD([g for g in method.param_groups()], momentum=0.9)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 64, 32)
    mod = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pids = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    cams = torch.tensor([0, 1, 0, 4, 2, 2, 5, 5])
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    for _ in range(3):
        losses = method.training_losses(x, mod, pids, cams)
        assert set(losses) == terms
        assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    changed = {n for n, p in method.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("net.backbone") for n in changed)
    if "ica" in terms or "center" in terms:
        assert "id_centers" in changed
    if "cca" in terms:
        assert "cam_centers" in changed
    if "mcm" in terms:  # the discriminator moves with its own optimiser
        assert any(n.startswith("mcm.") for n in changed)


def test_authors_code_variant_keeps_ica_centers_fixed(tiny_config):
    method = create_method(tiny_config(method="mclnet", **{"loss.variant": "authors-code"}), 6, 6)
    assert not method.id_centers.requires_grad and not method.cam_centers.requires_grad
    groups = {g["name"] for g in method.param_groups()}
    assert "centers" not in groups


def test_lr_schedule_warmup_and_steps(tiny_config):
    cfg = tiny_config(**{"train.warmup_epochs": 10, "train.milestones": [20, 50]}).train
    assert [lr_factor(e, cfg) for e in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert [lr_factor(e, cfg) for e in (10, 19, 20, 49, 50, 79)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_same_config_and_seed_give_identical_numbers(tiny_config):
    a = run_trial(tiny_config(method="mclnet"))
    b = run_trial(tiny_config(method="mclnet"))
    c = run_trial(tiny_config(method="mclnet", seed=1))
    assert a.status == b.status == "ok"
    for key in ("rank1", "mAP", "mINP", "final_losses", "cmc"):
        assert a.records[0][key] == b.records[0][key]
    assert a.records[0]["final_losses"] != c.records[0]["final_losses"]


def test_record_fields(tiny_config):
    result = run_trial(tiny_config(method="agw", **{"data.modes": ["all", "indoor"]}))
    assert [r["protocol"] for r in result.records] == ["all-single", "indoor-single"]
    r = result.records[0]
    for key in ("method", "backbone", "dataset", "seed", "config", "rank1", "rank5", "rank10", "rank20", "mAP",
                "mINP", "rank1_std", "mAP_std", "train_img_per_s", "infer_img_per_s", "peak_memory_mb",
                "wall_seconds", "device", "versions", "per_trial"):
        assert key in r, key
    assert 0 <= r["rank1"] <= r["rank5"] <= r["rank10"] <= r["rank20"] <= 100
    assert r["gallery_trials"] == 2 and math.isfinite(r["train_img_per_s"])


def test_resumed_trial_matches_uninterrupted(tiny_config, tmp_path):
    cfg = tiny_config(method="mclnet", **{"train.epochs": 3})
    full = run_trial(cfg)

    class Stop(Exception):
        pass

    def stop_after_first(epoch, losses, validate):
        if epoch == 0:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, workdir=tmp_path, on_epoch=stop_after_first)
    assert len(list(tmp_path.glob("*.ckpt"))) == 1
    resumed = run_trial(cfg, workdir=tmp_path)
    for key in ("rank1", "mAP", "mINP", "final_losses", "cmc"):
        assert resumed.records[0][key] == full.records[0][key], key


def test_non_finite_loss_is_a_recorded_failure(tiny_config):
    result = run_trial(tiny_config(method="agw", **{"train.lr": 1e30, "train.head_lr": 1e30}))
    assert result.status == "failed" and "non-finite" in result.failure
    assert result.records[0]["status"] == "failed"


def test_validation_uses_training_identities_only(tiny_config):
    cfg = tiny_config(method="agw", **{"data.val_identities": 3})
    seen = []
    result = run_trial(cfg, on_epoch=lambda e, losses, validate: seen.append(validate()))
    assert len(seen) == 2 and all("mAP" in v for v in seen)
    assert "val_mAP" in result.records[0]
    from harness.data.registry import load_dataset

    bundle = load_dataset(cfg.data, seed=cfg.seed)
    test_ids = set(bundle.protocols["all-single"].query.pids.tolist())
    assert not test_ids & set(bundle.validation.query.pids.tolist())


def _bnneck_by_hand(pooled: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
    """BatchNorm1d at test time: the running statistics, never the batch's."""
    return (pooled - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


@pytest.mark.parametrize("test_feature", [None, "pool"])
def test_test_features_are_the_bnneck_feature_by_default_and_extracted_in_eval_mode(tiny_config, test_feature):
    from harness.config import TrialConfig
    from harness.data.augment import normalize
    from harness.trial import extract_features

    assert TrialConfig().model.test_feature == "bn"  # the specs report the BNNeck feature
    cfg = tiny_config(**({} if test_feature is None else {"model.test_feature": test_feature}))
    method = create_method(cfg, num_classes=5, num_cameras=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # running statistics away from their init: test and training mode differ
        for module in method.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    images = torch.randint(0, 256, (6, 3, 64, 32), dtype=torch.uint8, generator=generator)
    modalities = np.array([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        method.eval()
        pooled = method.net.pool(method.net.backbone(normalize(images), torch.as_tensor(modalities)))
        expected = pooled if test_feature == "pool" else _bnneck_by_hand(pooled, method.net.neck.bn)
    state = {k: v.clone() for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}

    method.train()  # as a trainer leaves it
    features, _ = extract_features(method, images, modalities, device=torch.device("cpu"), batch_size=4,
                                   amp="none", channels_last=False)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    other = _bnneck_by_hand(pooled, method.net.neck.bn) if test_feature == "pool" else pooled
    assert not torch.allclose(features, other, atol=1e-3)
    for key, value in state.items():  # no running statistic moved
        assert torch.equal(method.state_dict()[key], value), key
