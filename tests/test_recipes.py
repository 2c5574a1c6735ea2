"""Named recipes: loading, precedence under specs and `vireid run`, and the paper specs that use them."""

from __future__ import annotations

import pytest
import yaml

from harness.cli import main
from harness.errors import ConfigError
from harness.recipes import apply_recipe, load_recipe, recipe_names
from harness.sweep import load_spec, parse_spec


def test_the_authors_recipe_holds_the_facts_of_their_code():
    config = load_recipe("mclnet-authors").config
    train, mcm = config["train"], config["mcm"]
    # train.py of the MCLNet code: `for epoch in range(start_epoch, 201 - start_epoch)`; d_optimizer nesterov=True
    assert train["epochs"] == 201 and mcm["nesterov"] is True and mcm["lr"] == 0.1
    # its RandomErasing(probability=0.8, sl=0.1, sh=0.8, r1=0.3), 100 attempts, mean fill after Normalize
    assert (train["erasing_p"], train["erasing_area"], train["erasing_attempts"]) == (0.8, [0.1, 0.8], 100)
    assert train["erasing_ratio"] == pytest.approx([0.3, 1 / 0.3]) and train["erasing_aspect"] == "uniform"
    assert config["model"]["pretrained"] == "resnet50.tv_in1k" and config["model"]["bnneck_init"] == "normal"
    assert config["loss"]["wrt_variant"] == "authors-code" and train["iters_per_epoch"] is None


def test_the_deen_recipe_holds_the_facts_of_their_code():
    config = load_recipe("deen-authors").config
    train, deen, data = config["train"], config["deen"], config["data"]
    # DEEN train.py: img_h 384, img_w 144, batch-size 6 (ids) x num_pos 4, lr 0.1 with the base at 0.1 * lr,
    # `for epoch in range(start_epoch, 151 - start_epoch)`, lambda_1 0.8, lambda_2 0.01, margin 0.3, CPMLoss(0.2)
    assert (data["height"], data["width"], data["train_resize"], data["test_resize"]) == (384, 144, "lanczos",
                                                                                          "lanczos")
    assert (train["num_identities"], train["images_per_modality"], train["lr"], train["head_lr"]) == (6, 4, 0.01, 0.1)
    assert (train["epochs"], train["warmup_epochs"], train["milestones"], train["gamma"]) == (151, 10, [20, 80], 0.1)
    assert (deen["cpm_weight"], deen["ort_weight"], deen["triplet_margin"], deen["cpm_margin"]) == (0.8, 0.01, 0.3, 0.2)
    # RandomGrayscale(p=0.5); RandomErasing(probability=0.5, sl=0.02, sh=0.4, r1=0.3, mean=[0.485, 0.456, 0.406])
    assert (train["grayscale_p"], train["erasing_p"], train["erasing_area"]) == (0.5, 0.5, [0.02, 0.4])
    assert train["erasing_ratio"] == pytest.approx([0.3, 1 / 0.3]) and train["erasing_aspect"] == "uniform"
    assert (train["erasing_fill"], train["erasing_value"], train["erasing_attempts"]) == (
        "constant", [0.485, 0.456, 0.406], 100)
    # test.py: --test-batch 32; each part is the sum of the image's and its mirror's; distmat7 counts six once each
    assert train["eval_batch_size"] == 32 and deen["test_branches"] == "all" and deen["test_weights"] == [1.0, 1.0]
    assert config["evaluation"]["flip"] is True
    assert config["model"]["pretrained"] == "resnet50.tv_in1k" and config["model"]["bnneck_init"] == "normal"


def test_the_deen_learning_rate_of_every_epoch_is_the_authors_schedule():
    from harness.config import TrainConfig
    from harness.training import lr_factor

    cfg = TrainConfig(**{k: v for k, v in load_recipe("deen-authors").config["train"].items()})

    def authors(epoch: int) -> float:  # adjust_learning_rate of DEEN's train.py, lr = 0.1; its `>= 120` never runs
        if epoch < 10:
            return 0.1 * (epoch + 1) / 10
        return 0.1 if epoch < 20 else 0.01 if epoch < 80 else 0.001

    for epoch in range(cfg.epochs):
        assert cfg.head_lr * lr_factor(epoch, cfg) == pytest.approx(authors(epoch), rel=1e-12), epoch
        assert cfg.lr * lr_factor(epoch, cfg) == pytest.approx(0.1 * authors(epoch), rel=1e-12), epoch


@pytest.mark.parametrize("name, drop_last_stage, erasing", [("paper_deen_llcm", False, [0.02, 0.4]),
                                                            ("paper_deen_sysu", False, [0.2, 0.8]),
                                                            ("paper_deen_regdb", True, [0.02, 0.4])])
def test_deen_paper_specs_use_the_deen_recipe_and_their_dry_runs_stay_offline(name, drop_last_stage, erasing):
    spec = load_spec(f"benchmarks/{name}.yaml")
    real = spec.trials()[0]
    assert real.method == "deen" and real.train.epochs == 151 and real.model.pretrained == "resnet50.tv_in1k"
    assert real.deen.drop_last_stage is drop_last_stage and real.train.erasing_area == erasing
    dry = spec.as_dry_run().trials()[0]
    assert dry.model.pretrained is None and dry.model.backbone == "test_resnet" and dry.data.dataset == "synthetic"


def test_spec_base_wins_over_the_recipe_and_the_rest_comes_from_it():
    spec = parse_spec({"name": "r", "recipe": "mclnet-authors", "base": {
        "model": {"backbone": "test_resnet", "pretrained": None}, "train": {"epochs": 3}}})
    (cfg,) = spec.trials({"train.erasing_p": 0.25})
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.train.epochs) == ("test_resnet", None, 3)
    assert cfg.train.erasing_p == 0.25  # --set wins over both
    assert (cfg.train.erasing_fill, cfg.mcm.batchnorm_out, cfg.model.bnneck_init) == ("constant", True, "normal")


def test_unknown_recipe_is_refused_with_the_available_names():
    with pytest.raises(ConfigError, match="unknown recipe 'mclnet-author'.*mclnet-authors"):
        apply_recipe("mclnet-author", {})
    assert "mclnet-authors" in recipe_names()


def test_a_recipe_file_by_path_is_validated(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"description": "x", "config": {"train": {"epochs": "many"}}}))
    with pytest.raises(ConfigError, match="train.epochs"):
        load_recipe(str(path))
    path.write_text(yaml.safe_dump({"description": "x", "config": {"train": {"epochs": 7}}}))
    assert apply_recipe(str(path), {"seed": 1}) == {"train": {"epochs": 7}, "seed": 1}


def test_vireid_run_refuses_an_unknown_recipe_with_exit_2(tmp_path, capsys):
    assert main(["run", "--recipe", "nope", "--results-dir", str(tmp_path), "--quiet"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["paper_main_sysu", "paper_ablation_sysu", "paper_main_regdb"])
def test_paper_specs_use_the_authors_recipe_and_their_dry_runs_stay_offline(name):
    spec = load_spec(f"benchmarks/{name}.yaml")
    real = spec.trials()[0]
    assert real.train.epochs == 201 and real.model.pretrained == "resnet50.tv_in1k"
    dry = spec.as_dry_run().trials()[0]
    assert dry.model.pretrained is None and dry.model.backbone == "test_resnet" and dry.data.dataset == "synthetic"


def test_the_caj_recipe_holds_the_facts_of_the_caj_code():
    config = load_recipe("caj-authors").config
    train, loss = config["train"], config["loss"]
    # train_ext.py: `for epoch in range(start_epoch, 100 - start_epoch)`; lr 0.1 with the base at 0.1x;
    # adjust_learning_rate: (epoch + 1) / 10 for 10 epochs, x0.1 from 20, x0.01 from 50
    assert train["epochs"] == 100 and (train["lr"], train["head_lr"]) == (0.01, 0.1)
    assert (train["warmup_epochs"], train["milestones"], train["gamma"]) == (10, [20, 50], 0.1)
    assert (train["num_identities"], train["images_per_modality"]) == (8, 4)  # --batch-size 8 --num_pos 4
    # ChannelRandomErasing(probability=0.5), sl 0.02, sh 0.4, r1 0.3, mean fill, 100 attempts, on every view
    assert (train["erasing_p"], train["erasing_area"], train["erasing_attempts"]) == (0.5, [0.02, 0.4], 100)
    assert train["erasing_ratio"] == pytest.approx([0.3, 1 / 0.3]) and train["erasing_fill"] == "constant"
    # ChannelExchange(gray=2): random.randint(0, 2) never draws the grayscale branch; ChannelAdapGray(0.5)
    assert train["channel_aug"] == {"exchange_grayscale": False, "adaptive_gray_p": 0.5}
    # --method adp --alpha 1 --gamma 1 --square 1, --kl 0
    assert loss["adp"] == {"weight": 1.0, "alpha": 1.0, "gamma": 1.0, "square": True, "variant": "authors-code"}
    assert loss["kl_weight"] == 0.0 and config["method"] == "caj"
    # TestData resizes with Image.ANTIALIAS (LANCZOS); testa.py averages each image with its mirror
    assert config["data"]["test_resize"] == "lanczos" and config["evaluation"]["flip"] is True
    assert config["model"]["pretrained"] == "resnet50.tv_in1k" and config["model"]["bnneck_init"] == "normal"


@pytest.mark.parametrize("name", ["paper_caj_sysu", "paper_caj_regdb", "paper_caj_llcm"])
def test_caj_paper_specs_use_the_caj_recipe_and_their_published_rows_exist(name):
    from harness.published import published_by_protocol

    spec = load_spec(f"benchmarks/{name}.yaml")
    trials = spec.trials()
    assert {cfg.method for cfg in trials} >= {"agw", "caj"}
    real = next(cfg for cfg in trials if cfg.method == "caj")
    assert real.train.epochs == 100 and real.evaluation.flip and real.loss.adp.variant == "authors-code"
    published = published_by_protocol(spec.table["published"], None)
    assert all("caj" in rows for rows in published.values()) and set(published) == set(spec.table["protocols"])
    dry = spec.as_dry_run().trials()[0]
    assert dry.model.pretrained is None and dry.model.backbone == "test_resnet" and dry.data.dataset == "synthetic"


def test_caj_published_numbers_are_the_readme_figures_with_the_llcm_directions():
    from harness.published import load_published, lookup

    data = load_published()
    assert lookup(data, "caj.sysu_all") == {"rank1": 69.88, "mAP": 66.89, "mINP": 53.61}
    assert lookup(data, "caj.regdb_v2t") == {"rank1": 85.03, "mAP": 79.14, "mINP": 65.33}
    # the DEEN README's CAJ row: first pair IR->VIS (gallery one sampled image per id and camera), then VIS->IR
    assert (lookup(data, "caj.llcm_ir2vis")["rank1"], lookup(data, "caj.llcm_ir2vis")["mAP"]) == (49.86, 56.40)
    assert (lookup(data, "caj.llcm_vis2ir")["rank1"], lookup(data, "caj.llcm_vis2ir")["mAP"]) == (63.73, 47.71)
