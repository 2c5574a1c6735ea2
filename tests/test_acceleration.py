"""Accelerated training steps (bf16 autocast, channels_last, torch.compile, fused SGD) against the plain step.

Two trainers built from the same seed start with identical weights and draw identical
batches (same sampler and augmentation streams), so any difference in losses, gradients or
updated weights comes from the acceleration alone.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from harness.bench import bench_config, build_step_setup
from harness.training import lr_factor, sgd_implementation
from harness.training import optim as training_optim

HEIGHT, WIDTH, BATCH = 32, 16, 8
INDUCTOR_ENV = "VIREID_TEST_INDUCTOR"


def make_setup(method: str = "mclnet", compile_backend: str = "inductor", **train: object):
    cfg = bench_config(method, "test_resnet", BATCH, device="cpu",
                       overrides={f"train.{k}": v for k, v in train.items()})
    return build_step_setup(cfg, HEIGHT, WIDTH, compile_backend=compile_backend)


def trained_parameters(setup) -> list[torch.nn.Parameter]:
    return [p for group in setup.trainer.optimizer.param_groups for p in group["params"]]


def flat_grad(setup) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).float() for p in trained_parameters(setup)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def assert_losses_close(got: dict[str, float], want: dict[str, float], rel: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=rel), name


@pytest.fixture(scope="module")
def plain_two_steps():
    """Loss values, gradients and weights after each of two plain fp32 eager steps."""
    setup = make_setup()
    record = []
    for _ in range(2):
        values = setup.trainer.train_step(setup.trainer.next_indices())
        record.append((values, flat_grad(setup).clone(),
                       {k: v.detach().clone() for k, v in setup.method.state_dict().items()
                        if isinstance(v, torch.Tensor)}))
    return setup, record


def test_host_staged_batches_equal_device_resident_ones(plain_two_steps):
    """The path for train sets too large for the device: gather on the host into a staging buffer.

    Exact equality also shows that two setups of one seed run identical steps (the premise here).
    """
    _, record = plain_two_steps
    staged = make_setup()
    staged.trainer.batches.images_on_device = False
    for values, grad, _ in record:
        assert staged.trainer.train_step(staged.trainer.next_indices()) == values
        assert torch.equal(flat_grad(staged), grad)
    assert staged.trainer.batches._staging is not None


def test_bf16_autocast_step_is_close_to_fp32(plain_two_steps):
    _, record = plain_two_steps
    fast = make_setup(amp="bf16")
    values = fast.trainer.train_step(fast.trainer.next_indices())
    assert_losses_close(values, record[0][0], rel=5e-2)
    assert cosine(flat_grad(fast), record[0][1]) > 0.95
    # the parameters stay float32 under autocast: only the compute is bf16
    assert all(p.dtype == torch.float32 for p in trained_parameters(fast))


def test_channels_last_step_matches_fp32(plain_two_steps):
    _, record = plain_two_steps
    fast = make_setup(channels_last=True)
    conv = next(m for m in fast.method.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for values, grad, _ in record:
        got = fast.trainer.train_step(fast.trainer.next_indices())
        assert_losses_close(got, values, rel=1e-4)
        # same maths, other conv kernels: float32 summation order differs (and with it tiny
        # gradients, relatively), so bound the error by the gradient's scale
        got_grad = flat_grad(fast)
        assert (got_grad - grad).abs().max() <= 1e-4 * grad.abs().max()
        assert cosine(got_grad, grad) > 0.99999


def check_compiled_steps(backend: str, plain, record) -> None:
    fast = make_setup(compile=True, compile_backend=backend)
    for values, grad, _ in record:
        got = fast.trainer.train_step(fast.trainer.next_indices())
        assert_losses_close(got, values, rel=1e-4)
        assert cosine(flat_grad(fast), grad) > 0.9999
    weights = record[-1][2]  # after the last step
    state = fast.trainer.state_dict(epoch=0)["method"]
    assert list(state) == list(plain.method.state_dict())
    assert not any("_orig_mod" in k for k in state)
    for name, value in weights.items():
        if value.is_floating_point():
            assert torch.allclose(state[name], value, rtol=1e-3, atol=1e-5), name
    # the checkpoint loads strictly into an uncompiled method of the same config
    eager = make_setup()
    eager.method.load_state_dict(state, strict=True)


def test_compiled_step_matches_eager_graph_capture(plain_two_steps):
    """Dynamo + AOT autograd (backend aot_eager): graph breaks, guards and the compiled backward."""
    check_compiled_steps("aot_eager", *plain_two_steps)


@pytest.mark.skipif(os.environ.get(INDUCTOR_ENV) != "1",
                    reason=f"inductor compiles C++ kernels: about 3 min for this tiny network on a cold cache "
                           f"with 2 loaded cores (11 s warm); set {INDUCTOR_ENV}=1 to run it")
def test_compiled_step_matches_eager_inductor(plain_two_steps):
    check_compiled_steps("inductor", *plain_two_steps)


def test_compiled_method_deep_copy_trains_its_own_network():
    setup = make_setup(compile=True, compile_backend="eager")
    # a deep copy trains its own network: the compiled forward takes the network as an argument
    clone = copy.deepcopy(setup.method)
    images = torch.randn(BATCH, 3, HEIGHT, WIDTH)
    modality = torch.arange(BATCH).ge(BATCH // 2).long()
    pids = torch.arange(BATCH) % 2
    cams = torch.where(modality == 0, 0, 2)
    with torch.no_grad():
        for p in clone.net.neck.classifier.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    ce_clone = clone.training_losses(images, modality, pids, cams)["ce"]
    ce_original = setup.method.training_losses(images, modality, pids, cams)["ce"]
    assert not torch.allclose(ce_clone, ce_original)


def nesterov_first_step(p0: torch.Tensor, grad: torch.Tensor, lr: float, momentum: float,
                        weight_decay: float) -> torch.Tensor:
    """SGD with Nesterov momentum from an empty buffer: buf = g + wd p; p - lr (g + wd p + m buf)."""
    d = grad + weight_decay * p0
    return p0 - lr * (d + momentum * d)


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_update_matches_hand_formula(fused):
    setup = make_setup(fused_optimizer=fused)
    t = setup.cfg.train
    kwargs = setup.trainer.optimizer.defaults
    assert kwargs["fused"] is (True if fused else None)
    before = {id(p): p.detach().clone() for p in trained_parameters(setup)}
    setup.trainer.train_step(setup.trainer.next_indices())
    factor = lr_factor(0, t)
    checked = set()
    for group in setup.trainer.optimizer.param_groups:
        for p in group["params"]:
            want = nesterov_first_step(before[id(p)], p.grad, group["initial_lr"] * factor, t.momentum,
                                       group["weight_decay"])
            assert torch.allclose(p.detach(), want, rtol=1e-5, atol=1e-7), group["name"]
        checked.add(group["name"])
    assert checked == {"backbone", "head", "centers"}


def test_fused_and_plain_updates_agree_over_steps(plain_two_steps):
    _plain, record = plain_two_steps
    fused = make_setup(fused_optimizer=True)
    for values, _, _ in record:
        assert_losses_close(fused.trainer.train_step(fused.trainer.next_indices()), values, rel=1e-5)
    weights = record[-1][2]
    for name, value in fused.method.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.allclose(value, weights[name], rtol=1e-5, atol=1e-7), name


def test_fused_request_falls_back_to_foreach_where_unsupported(monkeypatch):
    monkeypatch.setattr(training_optim, "fused_sgd_supported", lambda device: False)
    assert sgd_implementation(torch.device("cpu"), True) == {"foreach": True}
    assert sgd_implementation(torch.device("cpu"), False) == {}
    setup = make_setup(fused_optimizer=True)
    assert setup.trainer.optimizer.defaults["foreach"] is True
    assert not setup.trainer.optimizer.defaults["fused"]


def test_fused_sgd_is_used_on_the_cpu_where_torch_has_it():
    # torch >= 2.4 ships fused SGD kernels for CPU; the request must not silently degrade there
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    expected = {"fused": True} if "cpu" in _get_fused_kernels_supported_devices() else {"foreach": True}
    assert sgd_implementation(torch.device("cpu"), True) == expected
