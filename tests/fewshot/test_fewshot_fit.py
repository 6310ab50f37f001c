"""`ftclip fit` for the trained few-shot methods on a tiny set: base-to-new metrics, WiSE-FT's end points, the
retain and caption sets, per-step schedules, multi-seed summaries and recipe checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fit_helpers import one_thread, tiny_set, write_recipe

from ftclip.cli import main
from ftclip.errors import ConfigError
from ftclip.recipe import load_recipe
from ftclip.stages import lr_factor

LORA = {"enabled": True, "encoders": ["image", "text"], "targets": ["qkv"], "r": 2, "alpha": 1.0, "rslora": True,
        "dropout": 0.25}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_set(tmp_path_factory.mktemp("fewshot_fit") / "data")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_base2new_and_wise_end_points(data_root, tmp_path):
    """base/new/hm are reported; WiSE-FT at alpha 0 is the zero-shot model, at 1 the trained one."""
    recipe = write_recipe(tmp_path / "r.yaml", data_root, {
        "coop": {"kind": "coop", "train": ["prompts"], "epochs": 1, "optimizer": {"name": "sgd", "lr": 0.002}},
        "lora": {"kind": "clip_lora", "train": ["image.lora", "text.lora"], "epochs": 100, "max_steps": 3,
                 "optimizer": {"name": "adamw", "lr": 1.0e-2}, "schedule": {"name": "cosine", "interval": "step", "first_epoch": 0}},
        "ft": {"kind": "finetune", "train": ["image", "head"], "epochs": 1, "optimizer": {"name": "adamw", "lr": 1.0e-3}},
    }, data={"split": "base2new"}, strategies={"lora": LORA}, wise={"alpha": [0.0, 1.0]}, run={"dir": str(tmp_path / "run")})
    assert main(["fit", str(recipe)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for stage in ("initial", "coop", "lora", "ft"):
        m = metrics[stage]
        assert {"base", "new", "hm", "base/macro_f1", "new/ece", "base/per_class_accuracy"} <= set(m)
        assert m["hm"] == pytest.approx(2 * m["base"] * m["new"] / (m["base"] + m["new"]) if m["base"] + m["new"] else 0)
        assert len(m["base/per_class_accuracy"]) == 3 and len(m["new/per_class_accuracy"]) == 3  # ceil(6/2) base
    for stage in ("lora", "ft"):
        wise = metrics[stage]["wise"]
        assert wise["0"]["base"] == pytest.approx(metrics["initial"]["base"])
        assert wise["0"]["new"] == pytest.approx(metrics["initial"]["new"])
        assert wise["1"]["base"] == pytest.approx(metrics[stage]["base"])
        assert wise["1"]["hm"] == pytest.approx(metrics[stage]["hm"])
    assert "wise" not in metrics["coop"]  # learned prompts change no weight
    # the LoRA stage stepped its schedule per iteration: 3 steps of cosine over 3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "lora" / "last.ckpt", map_location="cpu", weights_only=False)
    sched = ckpt["lr_schedulers"][0]
    assert sched["last_epoch"] == 3 and ckpt["global_step"] == 3
    cfg = load_recipe(recipe)
    assert sched["_last_lr"][0] == pytest.approx(1.0e-2 * lr_factor(cfg.stages.lora.schedule, 1.0e-2, 3, 3))
    assert ckpt["ftclip"]["classifier"] == {"classifier": "text", "context": False, "normalize": True,
                                            "method": "clip_lora"}


def test_lp_plus_plus_tip_adapter_f_flyp_retain_and_captions(data_root, tmp_path):
    captions = tmp_path / "captions.csv"
    photos = sorted((data_root / "test").rglob("*.png"))[:6]
    captions.write_text("path,caption\n" + "".join(f"{p},a photo of a {p.parent.name.replace('_', ' ')}.\n"
                                                  for p in photos))
    recipe = write_recipe(tmp_path / "r.yaml", data_root, {
        "lpp": {"kind": "lp_plus_plus"},
        "tipf": {"kind": "tip_adapter_f", "train": ["cache"], "epochs": 1, "optimizer": {"name": "adamw", "lr": 1e-3, "eps": 1e-4}},
        "flyp": {"kind": "flyp", "train": ["image", "text", "logit_scale"], "epochs": 1,
                 "optimizer": {"name": "adamw", "lr": 1.0e-4}},
    }, strategies={"lp_plus_plus": {"epochs": 5}, "tip_adapter": {"augment_passes": 2, "search_step": [12, 4]}},
        eval={"retain": {"root": str(data_root)}, "captions": str(captions)}, run={"dir": str(tmp_path / "run")})
    assert main(["fit", str(recipe)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for stage in ("initial", "lpp", "tipf", "flyp"):
        assert {"accuracy", "retain/accuracy", "captions/i2t_r1", "captions/t2i_r10"} <= set(metrics[stage])
    # the retain set is this data set's test split, scored zero-shot: the same as the target before training
    assert metrics["initial"]["retain/accuracy"] == pytest.approx(metrics["initial"]["accuracy"])
    assert metrics["flyp"]["captions/i2t_r10"] == 1.0  # 6 captions: every one is in the top 10
    assert 0 <= metrics["lpp"]["fit"]["best_epoch"] < 5
    assert {"alpha", "beta", "val_accuracy"} <= set(metrics["tipf"]["fit"])


def test_seeds_run_one_run_each_and_summarise(data_root, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", data_root, {"zs": {"kind": "zeroshot"}}, eval={"before": False},
                          data={"shots": 1}, run={"dir": str(tmp_path / "runs")})
    assert main(["fit", str(recipe), "seeds=[1,2]"]) == 0
    summary = json.loads((tmp_path / "runs" / "seeds.json").read_text())
    assert summary["seeds"] == [1, 2]
    acc = summary["stages"]["zs"]["accuracy"]
    runs = [json.loads((tmp_path / "runs" / f"seed{s}" / "metrics.json").read_text())["zs"]["accuracy"] for s in (1, 2)]
    assert acc["values"] == pytest.approx(runs)
    assert acc["mean"] == pytest.approx(sum(runs) / 2) and acc["std"] == pytest.approx(abs(runs[0] - runs[1]) / 2)
    assert "seed: 2" in (tmp_path / "runs" / "seed2" / "config.yaml").read_text()


@pytest.mark.parametrize("override, message", [
    ("stages.zs.train=[image]", "stages.zs.train=['image'] is not allowed: a 'zeroshot' stage is fitted without an "
                                "optimizer and trains no parameter group"),
    ("stages.zs.kind=softmax", "stages.zs.kind 'softmax' is not a stage of task 'fewshot'"),
    ("stages.zs.losses.ce=1.0", "stages.zs.losses.ce is not a setting of a 'zeroshot' stage"),
    ("stages.zs.kind=coop", "stages.zs.train=[] is not allowed: it must be a non-empty list"),
    ("data.shots=0", "data.shots=0 is not allowed: it must be an integer >= 1"),
    ("data.split=novel", "data.split='novel' is not allowed: it must be one of: all, base2new"),
    ("wise.alpha=[1.5]", "wise.alpha=[1.5] is not allowed: it must be a list (each a finite number in [0, 1])"),
    ("strategies.zeroshot.templates=a photo", "is not a template set"),
    ("strategies.coop.position=last", "strategies.coop.position='last' is not allowed: it must be one of: end"),
])
def test_recipe_mistakes_are_one_error_before_any_data(tmp_path, override, message):
    from ftclip.engine import prepare

    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "missing", {"zs": {"kind": "zeroshot"}})
    with pytest.raises(ConfigError, match=re_escape(message)):
        prepare(load_recipe(recipe, [override]))  # the data root does not even exist


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_reference_lengths_follow_data_shots_in_the_bundled_recipes():
    """CoOp's epochs (50/100/200 by shots), CLIP-LoRA's 500 x K iterations, Tip-Adapter-F's EuroSAT 100 epochs."""
    coop = {k: load_recipe("fewshot_coop", ["data.root=/d", f"data.shots={k}"]).stages.coop.epochs for k in (1, 2, 4, 8, 16)}
    assert coop == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
    assert load_recipe("fewshot_coop", ["data.root=/d", "data.dataset=imagenet"]).stages.coop.epochs == 50
    assert load_recipe("fewshot_clip_lora", ["data.root=/d", "data.shots=4"]).stages.clip_lora.max_steps == 2000
    assert load_recipe("fewshot_tip_adapter_f", ["data.root=/d", "data.dataset=eurosat"]).stages.tip_adapter_f.epochs == 100
    with pytest.raises(ConfigError, match=r"stages\.clip_lora\.max_steps.*data\.shots must be an integer >= 1"):
        load_recipe("fewshot_clip_lora", ["data.root=/d", "data.shots=0"])
    lora = load_recipe("fewshot_clip_lora", ["data.root=/d"]).strategies.lora
    assert (lora.r, lora.alpha, lora.rslora, lora.dropout, list(lora.targets), list(lora.encoders)) == \
        (2, 1.0, True, 0.25, ["qkv"], ["image", "text"])
    assert math.isclose(load_recipe("fewshot_clip_lora", ["data.root=/d"]).stages.clip_lora.optimizer.weight_decay, 1e-2)
