"""`vireid import-checkpoint`: the AGW / MCLNet codes' checkpoints as harness saved models.

The source network's key names and shapes are data (tests/data/agw_code_embed_net_resnet50.txt, read
from the authors' instantiated `embed_net`); the reference forward below is the authors' eval
forward written out with torch.nn.functional over THEIR key names, independent of the harness's
modules: the imported model must compute the same features from the same tensors.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.cli import main
from harness.errors import ConfigError, InputError

KEYS_FILE = Path(__file__).parent / "data" / "agw_code_embed_net_resnet50.txt"
NUM_CLASSES = 395
# what embed_net's forward reads (the rest of the three ResNet-50s is built and saved, never run)
USED = ("visible_module.visible.conv1.", "visible_module.visible.bn1.", "thermal_module.thermal.conv1.",
        "thermal_module.thermal.bn1.", "base_resnet.base.layer", "NL_", "bottleneck.", "classifier.")
RESNET50_STAGES = ((1, 3, 1), (2, 4, 2), (3, 6, 2), (4, 3, 1))  # (stage, blocks, stride): last_conv_stride=1
NON_LOCAL_AFTER = {2: (2, 3), 3: (3, 4, 5)}  # NL_2.0/1 after layer2 blocks 2/3; NL_3.0..2 after layer3 3..5


def authors_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            shapes[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return shapes


def authors_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Their keys and shapes; random values of a well-scaled network where the forward reads them."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in authors_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif not key.startswith(USED):  # never read: one shared zero, no memory
            state[key] = torch.zeros(()).expand(shape)
        elif len(shape) == 4:  # convolutions: variance 1 / fan_in keeps the 16 blocks finite
            state[key] = torch.randn(shape, generator=generator) / np.sqrt(np.prod(shape[1:]))
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith("weight") and len(shape) == 1:
            state[key] = 0.2 + 0.6 * torch.rand(shape, generator=generator)
        else:  # BN bias / running_mean, conv biases, the classifier
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state


# ------------------------------------------------------------------ the authors' forward, written out


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], training=False, eps=1e-5)


def _bottleneck(x, sd, prefix, stride):
    out = F.relu(_bn(F.conv2d(x, sd[prefix + "conv1.weight"]), sd, prefix + "bn1."))
    out = F.relu(_bn(F.conv2d(out, sd[prefix + "conv2.weight"], stride=stride, padding=1), sd, prefix + "bn2."))
    out = _bn(F.conv2d(out, sd[prefix + "conv3.weight"]), sd, prefix + "bn3.")
    if prefix + "downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[prefix + "downsample.0.weight"], stride=stride), sd, prefix + "downsample.1.")
    return F.relu(out + x)


def _non_local(x, sd, prefix):
    b, _, h, w = x.shape
    g = F.conv2d(x, sd[prefix + "g.0.weight"], sd[prefix + "g.0.bias"]).view(b, -1, h * w).permute(0, 2, 1)
    theta = F.conv2d(x, sd[prefix + "theta.weight"], sd[prefix + "theta.bias"]).view(b, -1, h * w).permute(0, 2, 1)
    phi = F.conv2d(x, sd[prefix + "phi.weight"], sd[prefix + "phi.bias"]).view(b, -1, h * w)
    y = (theta @ phi / (h * w) @ g).permute(0, 2, 1).reshape(b, -1, h, w)
    return x + _bn(F.conv2d(y, sd[prefix + "W.0.weight"], sd[prefix + "W.0.bias"]), sd, prefix + "W.1.")


def authors_forward(sd, images, infrared: bool):
    """x_pool and bottleneck(x_pool) of embed_net.eval()(x, x, modal=2 if infrared else 1) (it returns their l2norm)."""
    stem = "thermal_module.thermal." if infrared else "visible_module.visible."
    x = F.relu(_bn(F.conv2d(images, sd[stem + "conv1.weight"], stride=2, padding=3), sd, stem + "bn1."))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, blocks, stride in RESNET50_STAGES:
        for i in range(blocks):
            x = _bottleneck(x, sd, f"base_resnet.base.layer{stage}.{i}.", stride if i == 0 else 1)
            if i in NON_LOCAL_AFTER.get(stage, ()):
                x = _non_local(x, sd, f"NL_{stage}.{NON_LOCAL_AFTER[stage].index(i)}.")
    pool = (x.flatten(2).pow(3).mean(-1) + 1e-12).pow(1 / 3)
    feat = F.batch_norm(pool, sd["bottleneck.running_mean"], sd["bottleneck.running_var"], sd["bottleneck.weight"],
                        sd["bottleneck.bias"], training=False, eps=1e-5)
    return pool, feat


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """What the AGW code's train.py saves: {'net': state_dict, 'cmc', 'mAP', 'mINP', 'epoch'} (numpy metrics)."""
    path = tmp_path_factory.mktemp("ckpt") / "sysu_agw_p4_n8_lr_0.1_seed_0_best.t"
    state = authors_state()
    # neck statistics of the pooled features (as training leaves them), so features differ image by image
    pool, _ = authors_forward(state, torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(2)), False)
    state["bottleneck.running_mean"], state["bottleneck.running_var"] = pool.mean(0), pool.var(0)
    cmc = np.linspace(0.4, 0.99, 50)  # the code's cmc: fraction matched by rank 1..
    torch.save({"net": state, "cmc": cmc, "mAP": np.float64(0.4765), "mINP": np.float64(0.353), "epoch": 58}, path)
    return path, state


@pytest.fixture(scope="module")
def imported_agw(checkpoint, tmp_path_factory):
    from harness.checkpoint_import import import_checkpoint

    out = tmp_path_factory.mktemp("models") / "agw-sysu.safetensors"
    weights, imported = import_checkpoint("agw", checkpoint[0], out, dataset="sysu")
    return weights, imported


def test_imported_model_computes_the_authors_features(checkpoint, imported_agw):
    from harness.saved_models import load_method, read_model

    _, state = checkpoint
    saved = read_model(imported_agw[0])
    method = load_method(saved)  # rebuilt from the card alone, as vireid eval / show / extract do
    images = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    features = {}
    for infrared in (False, True):
        pool, feat = (F.normalize(f, dim=1) for f in authors_forward(state, images, infrared))
        with torch.inference_mode():
            out = method(images, torch.full((3,), int(infrared)))
            test = method.test_features(images, torch.full((3,), int(infrared)))
        torch.testing.assert_close(F.normalize(out["pool"], dim=1), pool, rtol=0, atol=1e-5)
        torch.testing.assert_close(F.normalize(test, dim=1), feat, rtol=0, atol=1e-5)
        assert (feat[0] - feat[1]).abs().max() > 1e-2  # the features carry the image, far above the tolerance
        features[infrared] = feat
    # the other modality's stem gives other features: the stems did not land in one branch
    assert (features[False] - features[True]).abs().max() > 1e-2


def test_card_names_source_file_and_the_config_the_code_implies(checkpoint, imported_agw):
    from harness.provenance import file_sha256

    weights = imported_agw[0]
    card = json.loads(weights.with_suffix(".json").read_text())
    block = card["imported"]
    assert block["sha256"] == file_sha256(checkpoint[0]) and block["file"] == checkpoint[0].name
    assert "mangye16/Cross-Modal-Re-ID-baseline" in block["source"] and block["recipe"] == "mclnet-authors"
    assert card["trial_key"] == f"agw-{block['sha256'][:12]}" and weights.stem == "agw-sysu"
    assert card["method"] == "agw" and card["num_classes"] == NUM_CLASSES and card["dataset"] == "sysu"
    assert card["num_cameras"] == 6  # SYSU-MM01's cameras
    model = card["config"]["model"]
    assert model["non_local_ratio"] == 1e-6 and model["gem_variant"] == "authors-code"
    assert model["backbone"] == "resnet50" and model["test_feature"] == "bn"
    assert card["config"]["data"]["test_resize"] == "lanczos" and card["config"]["train"]["epochs"] == 81
    # 1025 saved tensors (3 x 318 of the ResNet-50s, 5 x 13 non-local, 5 + 1 neck): the stages of the two stem
    # copies and base_resnet's stem (conv1 + bn1: 6 tensors) are dropped
    assert block["tensors"] + block["dropped"] == len(authors_shapes()) == 3 * 318 + 5 * 13 + 6
    assert block["dropped"] == 2 * (318 - 6) + 6
    assert block["initialised_tensors"] == ["net.pool.p"]
    assert block["checkpoint_record"] == {"epoch": 58, "rank1": 40.0, "rank5": pytest.approx(44.8163, abs=1e-3),
                                          "rank10": pytest.approx(50.8367, abs=1e-3),
                                          "rank20": pytest.approx(62.8776, abs=1e-3), "mAP": 47.65, "mINP": 35.3}
    assert block["published"] == {"all-single": "agw.sysu_all", "v2t": "agw.regdb_v2t"}


def test_a_caj_checkpoint_is_the_same_network_under_the_caj_method_and_recipe(checkpoint, imported_agw, tmp_path):
    """ICCV21_CAJ saves the AGW code's embed_net: the same tensors land in the same places, the card names CAJ,
    its recipe (flip averaging at test time) and CAJ's published rows."""
    from safetensors.torch import load_file

    from harness.checkpoint_import import import_checkpoint

    weights, _ = import_checkpoint("caj", checkpoint[0], tmp_path / "caj.safetensors", dataset="sysu")
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["method"] == "caj" and card["imported"]["recipe"] == "caj-authors"
    assert card["config"]["evaluation"]["flip"] is True and card["config"]["data"]["test_resize"] == "lanczos"
    assert card["imported"]["published"]["all-single"] == "caj.sysu_all"
    caj, agw = load_file(str(weights)), load_file(str(imported_agw[0]))
    assert caj.keys() == agw.keys() and all(torch.equal(caj[k], agw[k]) for k in caj)


def test_every_tensor_of_the_network_lands_where_the_authors_had_it(checkpoint, imported_agw):
    """Value by value: an independent table of where each of their modules lives in the harness."""
    from safetensors.torch import load_file

    _, state = checkpoint
    saved = load_file(str(imported_agw[0]))
    trunk = "net.backbone.model."
    for key, value in state.items():
        if not key.startswith(USED):
            continue
        if key.startswith(("visible_module.visible.", "thermal_module.thermal.")):
            branch = 0 if key.startswith("visible") else 1
            module, rest = key.split(".", 3)[2:]
            target = f"{trunk}{module}.branches.{branch}.{rest}"
        elif key.startswith("NL_"):
            stage, index, rest = int(key[3]), int(key.split(".")[1]), key.split(".", 2)[2]
            target = f"{trunk}layer{stage}.{NON_LOCAL_AFTER[stage][index]}.1.{rest.replace('g.0.', 'g.')}"
        elif key.startswith("base_resnet.base."):
            layer, block, rest = key[len("base_resnet.base."):].split(".", 2)
            wrapped = int(block) in NON_LOCAL_AFTER.get(int(layer[-1]), ())
            target = f"{trunk}{layer}.{block}.{'0.' if wrapped else ''}{rest}"
        elif key.startswith("bottleneck."):
            target = "net.neck.bn." + key[len("bottleneck."):]
        else:
            target = "net.neck.classifier.weight"
        assert torch.equal(saved[target], value), key
    assert saved["net.pool.p"].item() == 3.0


def test_mclnet_import_keeps_the_training_only_tensors_at_their_seeded_init(checkpoint, imported_agw, tmp_path):
    from safetensors.torch import load_file

    from harness.checkpoint_import import import_checkpoint

    weights, imported = import_checkpoint("mclnet", checkpoint[0], tmp_path / "mclnet", dataset="sysu")
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["method"] == "mclnet" and card["config"]["train"]["epochs"] == 201  # the recipe's
    assert card["config"]["mcm"]["batchnorm_out"] is True
    assert set(imported["initialised"]) == {"net.pool.p", "mcm.", "id_centers", "cam_centers"}
    ours, agw = load_file(str(weights)), load_file(str(imported_agw[0]))
    assert ours["id_centers"].shape == (NUM_CLASSES, 2048) and ours["cam_centers"].shape == (6, 2048)
    for key, value in agw.items():  # the network itself: the same tensors as the AGW import
        assert torch.equal(ours[key], value), key
    again, _ = import_checkpoint("mclnet", checkpoint[0], tmp_path / "again", dataset="sysu")
    repeat = load_file(str(again))
    assert all(torch.equal(repeat[k], v) for k, v in ours.items())  # seeded: the same file twice


def test_every_registered_importer_names_a_method_a_valid_config_and_published_entries():
    from harness.checkpoint_import import _config
    from harness.published import load_published, lookup
    from methods import resolve_method
    from methods.importers import list_importers

    importers = list_importers()
    assert {"agw", "mclnet", "caj", "deen"} <= {i.name for i in importers}
    for importer in importers:
        resolve_method(importer.method)
        for dataset in {"sysu", *importer.dataset_config}:  # the per-dataset keys validate too
            cfg = _config(importer, dataset, {})
            assert cfg.method == importer.method and cfg.data.dataset == dataset
        for entry in importer.published.values():
            assert lookup(load_published(), entry)


def test_another_source_of_the_same_network_is_one_registration(monkeypatch):
    """CAJ's public network is embed_net unchanged: its importer reuses the AGW code's rules (ARCHITECTURE.md)."""
    from methods import importers
    from methods.agw_code_checkpoints import AGW_CODE_CONFIG, AGW_CODE_RULES

    monkeypatch.setattr(importers, "_IMPORTERS", dict(importers._IMPORTERS))  # the registration ends with the test

    @importers.register_importer("caj-example", method="agw", config=AGW_CODE_CONFIG,
                                 source="ICCV21_CAJ/model.py embed_net", published={"all-single": "caj.sysu_all"})
    def convert_caj(state):
        return AGW_CODE_RULES(state)

    importer = importers.get_importer("caj-example")
    assert importer.convert is convert_caj and importer.state_key == "net"
    converted = importer.convert({k: torch.zeros(()).expand(s) for k, s in authors_shapes().items()})
    assert not converted.unknown and (len(converted.tensors), len(converted.dropped)) == (1025 - 630, 630)
    with pytest.raises(ValueError, match="twice"):
        importers.register_importer("caj-example", method="agw", source="again")(convert_caj)


def test_numpy_1_names_of_the_saved_metrics_are_read(tmp_path):
    """A file saved under numpy 1 names numpy.core.multiarray; legacy (non-zip) format, GLOBAL opcodes."""
    from harness.checkpoint_import import checkpoint_record, read_checkpoint

    path = tmp_path / "old.t"
    torch.save({"net": {"a": torch.ones(2)}, "cmc": np.array([0.5, 0.75]), "mAP": np.float64(0.25), "epoch": 3},
               path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = read_checkpoint(path)
    assert checkpoint_record(loaded) == {"epoch": 3, "rank1": 50.0, "mAP": 25.0}


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_files_that_need_more_than_weights_only_loading_are_refused_with_exit_2(tmp_path, capsys):
    pickled = tmp_path / "pickled.t"
    torch.save({"net": {"a": torch.ones(1)}, "args": _Payload()}, pickled)
    objects = tmp_path / "objects.t"
    torch.save({"net": {"a": torch.ones(1)}, "names": np.array(["a", None], dtype=object)}, objects)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"net": {"a": [1.0]}, "f": print}))
    for path, needs in ((pickled, "needs builtins.print"), (objects, "ObjectDType"), (plain, "")):
        assert main(["import-checkpoint", "--from", "agw", str(path), str(tmp_path / "out"), "--dataset",
                     "sysu"]) == 2
        err = capsys.readouterr()
        assert "unpickled code ran" not in err.out + err.err
        assert str(path) in err.err and ("weights-only" in err.err or "not a PyTorch checkpoint" in err.err)
        assert needs in err.err
    assert not list(tmp_path.glob("out*"))


def test_incomplete_or_misshapen_state_dicts_are_refused_naming_keys(tmp_path, capsys):
    state = {k: torch.zeros((), dtype=torch.long if k.endswith("num_batches_tracked") else torch.float).expand(s)
             for k, s in authors_shapes().items()}  # refused before any value is read: shapes are enough
    cases = {
        "missing": ({k: v for k, v in state.items() if not k.startswith("NL_3.2.")},
                    ["missing", "layer3.5.1.theta.{bias,weight}", "layer3.5.1.W.1."]),
        # the AGW paper's C/2 inner channels: not the network the code saves
        "shapes": ({**state, "NL_2.0.theta.weight": torch.zeros(256, 512, 1, 1)}, ["NL_2.0.theta.weight (256, 512"]),
        "unknown": ({**state, "NL_4.0.g.0.weight": torch.zeros(1, 2048, 1, 1)}, ["NL_4.0.g.0.weight"]),
        "no net": ({"state_dict": state}, ["'net'", "state_dict"]),
    }
    for name, (content, named) in cases.items():
        path = tmp_path / f"{name}.t"
        torch.save(content if name == "no net" else {"net": content, "epoch": 1}, path)
        assert main(["import-checkpoint", "--from", "agw", str(path), str(tmp_path / name), "--dataset",
                     "sysu"]) == 2, name
        err = capsys.readouterr().err
        assert all(n in err for n in named), (name, err)
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.json"))


def test_bad_arguments_are_refused_before_reading(checkpoint, imported_agw, tmp_path):
    from harness.checkpoint_import import import_checkpoint

    with pytest.raises(ConfigError, match="no such checkpoint importer.*agw"):
        import_checkpoint("agw2", checkpoint[0], tmp_path / "x", dataset="sysu")
    with pytest.raises(InputError, match="exists"):
        import_checkpoint("agw", checkpoint[0], imported_agw[0], dataset="sysu")
    with pytest.raises(ConfigError, match="model.non_local_ratio"):
        import_checkpoint("agw", checkpoint[0], tmp_path / "x", dataset="sysu",
                          overrides={"model.non_local_ratio": 0.5})
    with pytest.raises(InputError, match="no such checkpoint file"):
        import_checkpoint("agw", tmp_path / "none.t", tmp_path / "x", dataset="sysu")


def test_eval_prints_the_published_number_beside_the_imported_model(imported_agw, tmp_path, capsys):
    """vireid eval on a SYSU-layout tree (generated images, loaded by the SYSU loader) under the exact protocol."""
    from harness.results import ResultStore

    root = tmp_path / "sysu"
    assert main(["data", "synth", "--layout", "sysu", str(root), "--identities", "8", "--images-per-camera", "1",
                 "--height", "64", "--width", "32"]) == 0
    model = str(imported_agw[0])
    assert main(["eval", model, "--results-dir", str(tmp_path), "--quiet", "--set", f"data.root={root}",
                 "--set", "data.height=64", "--set", "data.width=32", "--set", "data.modes=[all]",
                 "--set", "data.gallery_trials=1"]) == 0
    out = capsys.readouterr().out
    records = ResultStore(tmp_path / "eval").dataframe()
    assert set(records["protocol"]) == {"all-single"}
    assert set(records["model_key"]) == {f"agw-{imported_agw[1]['sha256'][:12]}"}
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "agw (published)" in table and "47.50" in table and "47.65" in table  # agw.sysu_all beside the row
    assert "all-single rank1 47.50, mAP 47.65, mINP 35.30" in out
    csv = (tmp_path / "eval" / "table.csv").read_text()
    assert "agw (published)" in csv and "47.5" in csv
    features = tmp_path / "cam3.npz"  # and extract: the infrared stream's BN features of a folder
    assert main(["extract", model, str(root / "cam3"), "--modality", "infrared", "--out", str(features), "--quiet",
                 "--set", "data.height=64", "--set", "data.width=32"]) == 0
    data = np.load(features, allow_pickle=False)
    assert data["features"].shape == (len(data["paths"]), 2048) and np.isfinite(data["features"]).all()
