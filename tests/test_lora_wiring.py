"""LoRA through the whole training path: recipe -> stages -> checkpoints -> evaluation -> reload -> resume.

One tiny two-stage re-ID run with ``strategies.lora.enabled=true stages.image.train=[image.lora,head]``
(the command docs/lora.md gives) is shared by the tests below; the LoRA layers themselves are tested
in tests/test_lora.py.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from conftest import tiny_reid_overrides
from ftclip.cli import main

RECIPE = "recipes/demo/reid_synthetic.yaml"
LORA = {"strategies.lora.enabled": "true", "stages.image.train": "[image.lora,head]",
        "trainer.deterministic": "true", "eval.before": "false", "data.check_images": "false"}


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _is_lora(key: str) -> bool:
    return "lora_" in key


@pytest.fixture(scope="module")
def lora_run(tiny_reid_root, tmp_path_factory):
    """(run dir, stdout) of a finished two-stage LoRA re-ID run."""
    import io
    from contextlib import redirect_stdout

    run_dir = tmp_path_factory.mktemp("lora") / "run"
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["fit", RECIPE, *tiny_reid_overrides(tiny_reid_root, run_dir, **LORA)])
    assert rc == 0, out.getvalue()[-2000:]
    return run_dir, out.getvalue()


def test_stage_prints_trainable_share_and_trains_only_adapters_and_head(lora_run):
    from ftclip.stages import _human

    run_dir, out = lora_run
    before = _state(run_dir / "checkpoints" / "prompts" / "last.ckpt")["state_dict"]
    after = _state(run_dir / "checkpoints" / "image" / "last.ckpt")["state_dict"]
    assert before.keys() == after.keys()

    # the checkpoint holds the adapters of every block's q/k/v/out projections, and they trained
    adapters = [k for k in after if _is_lora(k)]
    assert adapters and all(k.startswith("backbone.model.visual.transformer.resblocks.") for k in adapters)
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert any(f".attn.{proj}.lora_B." in k for k in adapters), proj
    lora_b = [k for k in adapters if ".lora_B." in k]
    assert all(torch.count_nonzero(before[k]) == 0 for k in lora_b), "B starts at zero"
    assert all(torch.count_nonzero(after[k]) > 0 for k in lora_b), "every adapter trained"

    # every base weight (image tower included) is bit-identical; only adapters and head moved
    for key, value in after.items():
        if _is_lora(key) or key.startswith("head."):
            continue
        assert torch.equal(value, before[key]), f"{key} changed in a LoRA stage"
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("head."))

    # the stage-start line counts exactly the adapters and the head (less the frozen BNNeck bias)
    from ftclip.runs import load_module_from_run
    from ftclip.runs import RunDir

    groups = load_module_from_run(RunDir(run_dir))[0].parameter_groups()
    trainable = sum(p.numel() for group in ("image.lora", "head") for n, p in groups[group] if not n.endswith("bn.bias"))
    total = sum(p.numel() for params in groups.values() for _, p in params)
    match = re.search(r"stage 'image': training (\S+) / (\S+) parameters \(([\d.]+)%\)", out)
    assert match, out
    assert match.groups() == (_human(trainable), _human(total), f"{100 * trainable / total:.2f}")
    assert sum(p.numel() for _, p in groups["image.lora"]) == 2 * 4 * 2 * 16 * 64  # 2 blocks, q/k/v/out, r=16, width 64


def test_evaluation_uses_the_adapted_model_and_the_run_reloads_strictly(lora_run):
    """``load_module_from_run`` rebuilds the adapters and loads the checkpoint (strict); evaluating it
    reproduces metrics.json, and the same model with the adapters switched off scores differently."""
    from ftclip.engine import evaluate
    from ftclip.runs import load_module_from_run
    from ftclip.runs import RunDir
    from ftclip.tasks import get_task

    run_dir, _ = lora_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    module, cfg = load_module_from_run(RunDir(run_dir))
    assert module.lora_summary is not None
    ckpt = _state(run_dir / "checkpoints" / "image" / "last.ckpt")["state_dict"]
    for key, value in module.state_dict().items():
        assert torch.equal(value, ckpt[key]), key

    datamodule = get_task(str(cfg.task)).build_datamodule(cfg)
    datamodule.set_preprocess(module.backbone.preprocess)
    adapted = evaluate(cfg, module, datamodule)
    assert adapted["mAP"] == pytest.approx(metrics["image"]["mAP"], abs=1e-6)
    assert adapted["rank1"] == pytest.approx(metrics["image"]["rank1"], abs=1e-6)

    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".lora_B." in name:
                param.zero_()
    plain = evaluate(cfg, module, datamodule)
    assert plain["mAP"] != pytest.approx(adapted["mAP"], abs=1e-6)


def test_resume_inside_a_lora_stage_gives_the_uninterrupted_weights(lora_run, tmp_path, capsys):
    """Stop stage 2 after 3 steps (max_steps), resume it with ``ftclip fit --resume``: same final weights."""
    from ftclip.recipe import load_saved_config, to_yaml

    ref_dir, _ = lora_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(ref_dir / "config.yaml", run_dir / "config.yaml")
    shutil.copytree(ref_dir / "checkpoints" / "prompts", run_dir / "checkpoints" / "prompts")
    (run_dir / "state.json").write_text(json.dumps({"completed": ["prompts"]}))
    (run_dir / "metrics.json").write_text(json.dumps({"prompts": json.loads((ref_dir / "metrics.json").read_text())["prompts"]}))

    def set_max_steps(value: int) -> None:
        cfg = load_saved_config(run_dir / "config.yaml")
        cfg.stages.image.max_steps = value
        (run_dir / "config.yaml").write_text(to_yaml(cfg))

    set_max_steps(3)  # the interruption: a mid-epoch stop (each epoch has more than 3 steps)
    assert main(["fit", "--resume", str(run_dir)]) == 0
    ckpt = run_dir / "checkpoints" / "image" / "last.ckpt"
    assert _state(ckpt)["global_step"] == 3
    (run_dir / "state.json").write_text(json.dumps({"completed": ["prompts"]}))
    set_max_steps(-1)
    capsys.readouterr()
    assert main(["fit", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"resuming stage 'image' from {ckpt}" in out and "stage 'prompts'" not in out

    ref, got = _state(ref_dir / "checkpoints" / "image" / "last.ckpt"), _state(ckpt)
    assert got["global_step"] == ref["global_step"] > 3
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key


def test_rank_zero_through_the_cli_is_one_clear_error(tiny_reid_root, tmp_path, capsys):
    # (an unknown target is in tests/test_bad_input.py)
    capsys.readouterr()
    rc = main(["fit", RECIPE, *tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{
        "strategies.lora.enabled": "true", "strategies.lora.r": "0", "data.check_images": "false"})])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ftclip: error: ") and "\n" not in err, err
    assert "strategies.lora.r" in err and ">= 1" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


# --------------------------------------------------------------------------- the bundled LoRA demos (slow)
@pytest.mark.slow
def test_reid_lora_demo_learns(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["fit", "recipes/demo/reid_lora_synthetic.yaml", f"run.dir={run_dir}",
                 f"data.root={tmp_path / 'synthetic'}"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "stage 'image': training 35.71K / 3.50M parameters (1.02%)" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before, after = metrics["initial"]["mAP"], metrics["image"]["mAP"]
    assert after > 0.12 and after > 10 * before, metrics  # measured: 0.0085 -> 0.186 (benchmarks/RESULTS.md)


@pytest.mark.slow
def test_iqa_lora_demo_learns(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["fit", "recipes/demo/iqa_lora_synthetic.yaml", f"run.dir={run_dir}",
                 f"data.synthetic_dir={tmp_path / 'data'}"]) == 0, capsys.readouterr().err
    assert "stage 'qualiclip': training 16.38K / 3.44M parameters (0.48%)" in capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before, after = metrics["initial"]["synthetic/srcc"], metrics["qualiclip"]["synthetic/srcc"]
    assert after > 0.15 and after > before + 0.15, metrics  # measured: -0.008 -> 0.261


def test_lora_enabled_but_never_trained_is_a_config_error(tiny_reid_root, tmp_path, capsys):
    overrides = tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{"strategies.lora.enabled": "true",
                                                                         "data.check_images": "false"})
    assert main(["fit", RECIPE, *overrides]) == 2
    err = capsys.readouterr().err
    assert "no stage trains image.lora" in err and "strategies.lora.enabled=false" in err
    assert not (tmp_path / "run").exists()
