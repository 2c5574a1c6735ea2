"""CAJ: the ADP triplet, the KL term and the channel augmentations against references written from
their formulas, the training batch the method builds, its presets and grammar."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.config import TrialConfig
from harness.data.augment import channel_adaptive_gray, channel_exchange
from harness.errors import ConfigError, HarnessError
from methods import create_method, list_methods
from methods.losses import adp_loss, kl_divergence_loss, wrt_loss

GRAY = (0.2989, 0.5870, 0.1140)


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


# --------------------------------------------------------------------------------------------
# references, one anchor at a time
# --------------------------------------------------------------------------------------------


def reference_adp(features: torch.Tensor, labels: torch.Tensor, *, alpha: float, gamma: float, square: bool,
                  variant: str) -> torch.Tensor:
    """The enhanced squared difference per anchor, from torch scalars (differentiable).

    paper: d_ij Euclidean (0 on the diagonal); w+_ij = exp(alpha d_ij) / sum over positives,
    w-_ij = exp(-alpha d_ij) / sum over negatives; p = sum w+ d, n = sum w- d, g = p - n;
    loss_i = softplus(sign(g) gamma g^2) (square) or softplus(gamma g); mean over anchors with a negative.
    authors-code: d_ij = sqrt(max(|a_i|^2 + |a_j|^2 - 2 a_i.a_j, 1e-12)); each softmax subtracts the
    max of the masked row (masked entries 0) and adds 1e-6 to its normaliser; square: min(gamma g^2, 88),
    target y = -1 where p > n else +1, loss_i = log(1 + exp(-y min(...))); not square: log(1 + exp(-gamma (n - p))).
    """
    n = features.shape[0]
    ids = labels.tolist()
    total, count = features.new_zeros(()), 0
    for i in range(n):
        if variant == "paper":
            dist = [(features[i] - features[j]).norm() if j != i else features.new_zeros(()) for j in range(n)]
        else:
            dist = [torch.clamp(features[i].dot(features[i]) + features[j].dot(features[j])
                                - 2 * features[i].dot(features[j]), min=1e-12).sqrt() for j in range(n)]
        sides = []
        for sign, member in ((1.0, lambda j, i=i: ids[j] == ids[i]), (-1.0, lambda j, i=i: ids[j] != ids[i])):
            mask = [member(j) for j in range(n)]
            if variant == "paper":
                if not any(mask):
                    sides.append(None)
                    continue
                exps = [torch.exp(sign * alpha * dist[j]) for j in range(n) if mask[j]]
                members = [dist[j] for j in range(n) if mask[j]]
                sides.append(sum(e * d for e, d in zip(exps, members)) / sum(exps))
            else:
                values = [sign * alpha * dist[j] if mask[j] else features.new_zeros(()) for j in range(n)]
                top = max(values[j] if mask[j] else 0.0 for j in range(n))
                exps = [torch.exp(values[j] - top) if mask[j] else features.new_zeros(()) for j in range(n)]
                norm = sum(exps) + 1e-6
                sides.append(sum(dist[j] * exps[j] / norm for j in range(n)))
        positive, negative = sides
        if negative is None:
            continue
        gap = positive - negative
        if variant == "paper":
            term = gamma * gap**2 if square else gamma * gap
            if square and gap <= 0:
                term = -term
            total = total + torch.nn.functional.softplus(term)
        elif square:
            clamped = torch.clamp(gamma * gap**2, max=88.0)
            y = -1.0 if positive > negative else 1.0
            total = total + torch.log1p(torch.exp(-y * clamped))
        else:
            total = total + torch.log1p(torch.exp(-gamma * (negative - positive)))
        count += 1
    return total / max(count, 1)


def random_batch(seed: int, scale: float = 2.0, n_ids: int = 4, per_id: int = 3, dim: int = 6):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    features = scale * torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    return features, labels


# --------------------------------------------------------------------------------------------
# ADP
# --------------------------------------------------------------------------------------------


def test_adp_hand_computed():
    # f0=(0,0) id0, f1=(3,0) id0, f2=(0,4) id1: d01=3, d02=4, d12=5; alpha 1, gamma 1, squared
    features = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    pos = 3 * math.exp(3) / (1 + math.exp(3))  # anchors 0 and 1: softmax over their positives {0, 3}
    neg_2 = (4 * math.exp(-4) + 5 * math.exp(-5)) / (math.exp(-4) + math.exp(-5))
    # every gap is negative (satisfied): softplus(-(gap^2))
    expected = (softplus(-(pos - 4) ** 2) + softplus(-(pos - 5) ** 2) + softplus(-(0 - neg_2) ** 2)) / 3
    assert adp_loss(features, labels).item() == pytest.approx(expected, rel=1e-12)
    # a violated anchor: f2 moved next to f0, so anchor 0's negative (0.5) is nearer than its positive
    features[2] = torch.tensor([0.0, 0.5])
    loss = adp_loss(features, labels, gamma=2.0)
    d01, d02, d12 = 3.0, 0.5, math.hypot(3.0, 0.5)
    pos = d01 * math.exp(d01) / (1 + math.exp(d01))
    neg_2 = (d02 * math.exp(-d02) + d12 * math.exp(-d12)) / (math.exp(-d02) + math.exp(-d12))
    terms = [2 * (pos - d02) ** 2, -2 * (pos - d12) ** 2, -2 * neg_2**2]  # signed: + where violated
    assert loss.item() == pytest.approx(sum(softplus(t) for t in terms) / 3, rel=1e-12)


@pytest.mark.parametrize("variant", ["paper", "authors-code"])
@pytest.mark.parametrize(("alpha", "gamma", "square"), [(1.0, 1.0, True), (2.0, 0.5, True), (1.0, 1.0, False),
                                                        (0.5, 3.0, False), (0.0, 1.0, True)])
@pytest.mark.parametrize("scale", [0.3, 2.0, 9.0])
def test_adp_matches_the_reference_in_values_and_gradients_float64(variant, alpha, gamma, square, scale):
    features, labels = random_batch(7, scale)
    features.requires_grad_()
    loss = adp_loss(features, labels, alpha=alpha, gamma=gamma, square=square, variant=variant)
    (grad,) = torch.autograd.grad(loss, features)
    reference_features = features.detach().clone().requires_grad_()
    expected = reference_adp(reference_features, labels, alpha=alpha, gamma=gamma, square=square, variant=variant)
    (expected_grad,) = torch.autograd.grad(expected, reference_features)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-300)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12 * max(1.0, expected_grad.abs().max().item()))


def test_adp_authors_code_clamps_the_squared_gap_at_88_and_stops_its_gradient_there():
    # identities 30 apart, each identity's images spread: the code's negative term vanishes, p^2 > 88
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(3).repeat_interleave(4)
    features = (30.0 * torch.eye(3, 5, dtype=torch.float64)[labels]
                + 6.0 * torch.randn(12, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    loss = adp_loss(features, labels, variant="authors-code")
    assert loss.item() == pytest.approx(softplus(88.0), rel=1e-12)  # every anchor at the clamp
    (grad,) = torch.autograd.grad(loss, features)
    assert torch.count_nonzero(grad) == 0
    paper = adp_loss(features, labels)  # as written: real negative distances, no clamp, a gradient
    assert paper.item() < 10.0 and torch.count_nonzero(torch.autograd.grad(paper, features)[0]) > 0


@pytest.mark.parametrize("variant", ["paper", "authors-code"])
def test_adp_without_square_and_unit_alpha_gamma_is_wrt(variant):
    features, labels = random_batch(3)
    assert adp_loss(features, labels, square=False, variant=variant).item() == pytest.approx(
        wrt_loss(features, labels, variant=variant).item(), rel=1e-12)


def test_adp_gradcheck_and_half_precision():
    features, labels = random_batch(5, 1.5)
    assert torch.autograd.gradcheck(lambda f: adp_loss(f, labels, alpha=2.0), (features.requires_grad_(),))
    half = adp_loss(features.detach().to(torch.bfloat16), labels)
    assert half.dtype == torch.float32


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"variant": "code"}, "variant must be one of"),
    ({"gamma": 0.0}, "gamma > 0"),
    ({"alpha": float("nan")}, "alpha must be a finite number"),
])
def test_adp_rejects_bad_arguments(kwargs, fragment):
    with pytest.raises(HarnessError, match=fragment):
        adp_loss(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]), **kwargs)


# --------------------------------------------------------------------------------------------
# KL term
# --------------------------------------------------------------------------------------------


def test_kl_term_is_the_tempered_kl_of_the_teacher_to_the_student():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    loss = kl_divergence_loss(student, teacher, temperature=3.0)
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        s_norm = sum(math.exp(v / 3) for v in s_row)
        t_norm = sum(math.exp(v / 3) for v in t_row)
        for s, t in zip(s_row, t_row):
            q = math.exp(t / 3) / t_norm + 1e-7
            expected += 9 * q * (math.log(q) - math.log(math.exp(s / 3) / s_norm))
    assert loss.item() == pytest.approx(expected / 4, rel=1e-12)
    loss.backward()
    assert teacher.grad is None and student.grad is not None  # the teacher is a constant


# --------------------------------------------------------------------------------------------
# channel augmentation: what each image becomes, and how often
# --------------------------------------------------------------------------------------------


def _classify(original: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per image: 0/1/2 = that channel copied to all three, 3 = grayscale, 4 = unchanged, -1 = anything else."""
    kind = torch.full((len(out),), -1)
    gray = GRAY[0] * original[:, 0] + GRAY[1] * original[:, 1] + GRAY[2] * original[:, 2]
    candidates = [original[:, c:c + 1].expand_as(original) for c in range(3)]
    candidates += [gray.unsqueeze(1).expand_as(original), original]
    for index, candidate in enumerate(candidates):
        kind[(out == candidate).flatten(1).all(dim=1)] = index
    return kind


def test_channel_exchange_copies_one_channel_exactly_each_a_third_of_the_time():
    images = torch.randn(6000, 3, 4, 3, generator=torch.Generator().manual_seed(0))
    kind = _classify(images, channel_exchange(images, torch.Generator().manual_seed(1)))
    shares = torch.bincount(kind + 1, minlength=6)[1:].double() / len(kind)
    assert (kind >= 0).all() and (kind <= 2).all()  # never grayscale, never unchanged: the code's gray=2
    assert shares[:3].tolist() == pytest.approx([1 / 3] * 3, abs=0.025)  # ~4 standard errors at 6,000 draws
    with_gray = _classify(images, channel_exchange(images, torch.Generator().manual_seed(2), grayscale=True))
    shares = torch.bincount(with_gray, minlength=5).double() / len(kind)
    assert shares[:4].tolist() == pytest.approx([1 / 4] * 4, abs=0.025) and shares[4] == 0


def test_channel_adaptive_gray_shares_a_quarter_per_channel_an_eighth_gray_an_eighth_unchanged():
    images = torch.randn(8000, 3, 4, 3, generator=torch.Generator().manual_seed(0))
    kind = _classify(images, channel_adaptive_gray(images, torch.Generator().manual_seed(3), p=0.5))
    assert (kind >= 0).all()
    shares = torch.bincount(kind, minlength=5).double() / len(kind)
    assert shares.tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 4, 1 / 8, 1 / 8], abs=0.02)
    never_gray = _classify(images, channel_adaptive_gray(images, torch.Generator().manual_seed(3), p=0.0))
    assert torch.bincount(never_gray, minlength=5)[3] == 0


# --------------------------------------------------------------------------------------------
# the method: its training batch, its losses, its presets
# --------------------------------------------------------------------------------------------

TINY_NET = {"model": {"backbone": "test_resnet", "non_local": False}}


def _method(name: str, **overrides):
    cfg = TrialConfig.from_dict({"method": name, **TINY_NET}).with_overrides(overrides)
    return create_method(cfg, num_classes=6, num_cameras=4)


def _sampled_batch(p: int = 3, k: int = 2):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * p * k, 3, 16, 8), generator=generator, dtype=torch.uint8)
    pids = torch.arange(p).repeat_interleave(k).repeat(2)
    modality = torch.arange(2 * p * k).ge(p * k).long()
    cams = torch.where(modality == 0, 0, 2) + torch.arange(2 * p * k) % 2
    return images, modality, pids, cams


def test_the_caj_batch_is_visible_then_exchanged_visible_then_infrared_with_labels_repeated():
    from harness.data.augment import normalize

    images, modality, pids, cams = _sampled_batch()
    calls = []

    def augment(x):  # no random geometry: each view is the normalised image, so the channels can be checked
        calls.append(len(x))
        return normalize(x)

    x, m, p, c = _method("caj").training_batch(images, modality, pids, cams, augment=augment,
                                               generator=torch.Generator().manual_seed(0))
    n = 6
    assert calls == [12, 6]  # the whole batch once, the visible images once more (their own draws)
    assert torch.equal(m, torch.tensor([0] * 12 + [1] * 6))
    assert torch.equal(p, torch.cat([pids[:n], pids[:n], pids[n:]]))
    assert torch.equal(c, torch.cat([cams[:n], cams[:n], cams[n:]]))
    plain = normalize(images)
    assert torch.equal(x[:n], plain[:n])
    exchanged = _classify(plain[:n], x[n:2 * n])
    assert ((exchanged >= 0) & (exchanged <= 2)).all()  # one channel of its own image in all three
    assert (_classify(plain[n:], x[2 * n:]) >= 0).all()  # infrared: a channel, gray or unchanged

    y, m2, p2, c2 = _method("caj+no-ca").training_batch(images, modality, pids, cams, augment=normalize,
                                                        generator=torch.Generator())
    assert torch.equal(y, plain) and torch.equal(m2, modality) and torch.equal(p2, pids) and torch.equal(c2, cams)


def test_caj_losses_are_ce_plus_adp_plus_the_weighted_kl_of_visible_against_infrared_rows():
    torch.manual_seed(0)
    method = _method("caj", **{"loss.kl_weight": 0.7, "loss.adp.gamma": 2.0}).double().train()
    images, modality, pids, cams = _sampled_batch()
    x, m, p, c = method.training_batch(images, modality, pids, cams, augment=lambda v: v.double() / 255,
                                       generator=torch.Generator().manual_seed(0))
    losses = method.training_losses(x, m, p, c)
    assert set(losses) == {"ce", "adp", "kl"}
    out = method(x, m)  # training mode again: batch statistics, the same outputs
    torch.testing.assert_close(losses["ce"], torch.nn.functional.cross_entropy(out["logits"], p), rtol=1e-12,
                               atol=0)
    torch.testing.assert_close(losses["adp"], adp_loss(out["pool"], p, gamma=2.0), rtol=1e-12, atol=0)
    # the plain visible rows (first 6) against the infrared rows (last 6), the same identities row by row
    assert torch.equal(p[:6], p[-6:])
    torch.testing.assert_close(losses["kl"], 0.7 * kl_divergence_loss(out["logits"][:6], out["logits"][-6:]),
                               rtol=1e-12, atol=0)


def test_caj_without_channel_augmentation_with_wrt_trains_exactly_as_agw(tiny_config):
    from harness.trial import run_trial

    agw = run_trial(tiny_config(method="agw"))
    same = run_trial(tiny_config(method="caj+no-ca+wrt"))
    caj = run_trial(tiny_config(method="caj"))
    assert agw.status == same.status == caj.status == "ok"
    assert [r["final_losses"] for r in agw.records] == [r["final_losses"] for r in same.records]
    assert [r["mAP"] for r in agw.records] == [r["mAP"] for r in same.records]
    assert set(json.loads(caj.records[0]["final_losses"])) == {"ce", "adp", "total"}


def test_presets_and_the_grammar():
    names = [m.name for m in list_methods()]
    assert {"caj", "caj+wrt", "caj+no-ca"} <= set(names)
    for name, channel_aug, triplet in [("caj", True, "adp"), ("caj+wrt", True, "wrt"), ("caj+no-ca", False, "adp"),
                                       ("caj+wrt+no-ca", False, "wrt")]:
        method = _method(name)
        assert (method.channel_aug, method.triplet) == (channel_aug, triplet), name
    with pytest.raises(ConfigError, match="unknown switch 'mcm' in caj\\+mcm; accepted switches: wrt, no-ca"):
        _method("caj+mcm")


def test_the_caj_network_runs_in_float64():
    method = _method("caj", **{"loss.kl_weight": 1.0}).double().train()
    images, modality, pids, cams = _sampled_batch()
    batch = method.training_batch(images, modality, pids, cams, augment=lambda v: v.double() / 255,
                                  generator=torch.Generator().manual_seed(0))
    losses = method.training_losses(*batch)
    assert all(v.dtype == torch.float64 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [q.grad for q in method.parameters() if q.grad is not None]
    assert grads and all(g.dtype == torch.float64 and torch.isfinite(g).all() for g in grads)


def test_the_methods_spec_holds_the_main_jobs_agw_and_mclnet_trials(monkeypatch):
    """benchmarks/methods_synthetic.yaml's agw and mclnet trials are the committed main job's (same keys)."""
    from pathlib import Path

    from harness.provenance import config_key
    from harness.results import ResultStore
    from harness.sweep import load_spec

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    stored = set(ResultStore(root / "results" / "reference" / "ablation-synthetic").dataframe()["trial_key"])
    trials = load_spec("benchmarks/methods_synthetic.yaml").trials()
    assert sorted({(cfg.method, cfg.seed) for cfg in trials}) == sorted(
        (m, s) for m in ("agw", "mclnet", "caj", "deen") for s in range(6))
    assert all((config_key(cfg) in stored) == (cfg.method in ("agw", "mclnet")) for cfg in trials)
