"""Exports of every image tower kind: open_clip round trips (plain open_clip in a process without ftclip,
following the model card), ONNX parity, FastViT folded for deployment and verified equal, SigLIP's logit
bias kept; the Hugging Face export wired through the CLI and run.export (refusals name the tower)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tower_models  # noqa: F401  (registers ftclip-test-sigmoid)
from export_helpers import make_cheap_run
from test_export import _reference, _run_plain_open_clip

from ftclip.artifacts.export import export_run
from ftclip.artifacts.inference import load_for_inference

LORA_TARGETS = {"ftclip-tiny-rn": "[attn]", "ftclip-tiny-mobileclip": "[attn,mlp]", "ftclip-test-sigmoid": "[attn,mlp]"}


@pytest.fixture(scope="module")
def exports(tiny_reid_root, tmp_path_factory):
    """A LoRA run per tower kind (adapters to merge), exported as open_clip (ONNX: the slow test below)."""
    base = tmp_path_factory.mktemp("towers")
    out = {}
    for name, targets in LORA_TARGETS.items():
        run, _ = make_cheap_run(tiny_reid_root, base / f"run-{name}", lora=True,
                                **{"model.name": name, "strategies.lora.targets": targets})
        out[name] = (run, export_run(run.path, ["open_clip"], out=base / f"exp-{name}"))
    return out


def _card_code(folder: Path, start: str) -> str:
    """The model card's python block that begins with ``start``, pointed at ``folder``."""
    card = (folder / "README.md").read_text()
    block = card.split("```python\n" + start)[1].split("```")[0]
    return (start + block).replace("/path/to/this/folder", str(folder))


@pytest.mark.parametrize("name", sorted(LORA_TARGETS))
def test_export_verifies_and_reloads_like_the_run(exports, name):
    run, out = exports[name]
    meta = json.loads((out / "ftclip_export.json").read_text())
    ver = meta["verification"]
    assert meta["lora_merged"] and meta["features_available"] == ["proj", "final", "final+proj"]
    assert ver["encode_image_max_abs_diff"] < 1e-5 and ver["feature_final+proj_max_abs_diff"] < 1e-5
    images = torch.randn(3, 3, 128, 64, generator=torch.Generator().manual_seed(3))
    _, ref_proj, ref_task = _reference(run.path, images)
    loaded = load_for_inference(out, device="cpu")
    assert (loaded.encode(images, "proj", normalize=False) - ref_proj).abs().max() < 1e-5
    assert (loaded.encode(images) - ref_task).abs().max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LORA_TARGETS))
def test_onnx_image_encoder_of_every_tower_matches_the_run(exports, name, tmp_path):
    import onnxruntime as ort

    run, _ = exports[name]
    out = export_run(run.path, ["onnx"], out=tmp_path / "exp")
    meta = json.loads((out / "ftclip_export.json").read_text())
    assert max(meta["verification"]["onnx"]["image_encoder.onnx"]["max_abs_diff"].values()) < 1e-4
    if name == "ftclip-tiny-mobileclip":  # the deployment (folded) form
        assert "re-parameterised for deployment" in meta["files"]["image_encoder.onnx"]
    images = torch.randn(5, 3, 128, 64, generator=torch.Generator().manual_seed(4))  # another batch size
    session = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    proj, final = session.run(None, {"image": images.numpy()})
    module, ref_proj, ref_task = _reference(run.path, images)
    assert np.abs(proj - ref_proj.numpy()).max() < 1e-4
    task = torch.nn.functional.normalize(torch.cat([torch.from_numpy(final), torch.from_numpy(proj)], 1), dim=1)
    assert (task - ref_task).abs().max() < 1e-4


def test_resnet_export_loads_with_plain_open_clip_as_the_card_says(exports, tmp_path):
    """CLIP-ReID's stride-1 ResNet: the card's loading lines (stock RN config, then the last-stride and
    grid fix) and its task-feature function reproduce the run in a process that never imports ftclip."""
    run, out = exports["ftclip-tiny-rn"]
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["ftclip_tower"] == {"image_size": [128, 64], "resnet_last_stride": 1}
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 64  # the stock architecture open_clip builds
    assert json.loads((out / "ftclip_export.json").read_text())["open_clip_one_liner"] is None
    images = torch.randn(3, 3, 128, 64, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "images.npy", images.numpy())
    code = f"""
        import numpy as np, torch, open_clip
        open_clip.add_model_config("{Path(__file__).resolve().parents[1] / 'ftclip' / 'model_configs'}")
        exec({_card_code(out, "import open_clip, torch")!r})
        exec({_card_code(out, "import torch, torch.nn.functional as F")!r})
        images = torch.from_numpy(np.load("{tmp_path / 'images.npy'}"))
        with torch.no_grad():
            np.save("{tmp_path / 'proj.npy'}", model.encode_image(images).numpy())
        np.save("{tmp_path / 'task.npy'}", task_feature(model, images).numpy())
    """
    result = _run_plain_open_clip(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, ref_proj, ref_task = _reference(run.path, images)
    assert np.abs(np.load(tmp_path / "proj.npy") - ref_proj.numpy()).max() < 1e-5
    assert np.abs(np.load(tmp_path / "task.npy") - ref_task.numpy()).max() < 1e-5


@pytest.mark.slow
def test_mobileclip_export_is_stock_open_clip_and_folds_for_deployment(exports, tmp_path):
    """Plain open_clip builds the multi-branch FastViT from local-dir:; timm's reparameterize_model folds it
    to the same features; the ONNX encoder is the folded one (verified at export)."""
    run, out = exports["ftclip-tiny-mobileclip"]
    meta = json.loads((out / "ftclip_export.json").read_text())
    assert meta["reparameterized"] and "ftclip_tower" not in json.loads((out / "open_clip_config.json").read_text())
    folded = meta["verification"]["reparameterized_max_abs_diff"]
    assert folded["encode_image"] < 1e-5 and folded["feature_final+proj"] < 1e-5
    assert "reparameterize_model" in (out / "README.md").read_text()
    images = torch.randn(3, 3, 128, 64, generator=torch.Generator().manual_seed(6))
    np.save(tmp_path / "images.npy", images.numpy())
    code = f"""
        import sys, numpy as np, torch, open_clip
        from functools import partial
        from timm.models import register_model, generate_default_cfgs
        from timm.models.fastvit import _create_fastvit, RepConditionalPosEnc
        from timm.utils import reparameterize_model
        default_cfgs = generate_default_cfgs({{"ftclip_tiny_fastvit_mci": {{"url": ""}}}})
        @register_model
        def ftclip_tiny_fastvit_mci(pretrained=False, **kw):   # the tiny trunk, as a user registers one
            return _create_fastvit("ftclip_tiny_fastvit_mci", pretrained=pretrained, **dict(dict(
                layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), mlp_ratios=(3, 3, 3, 3),
                se_downsamples=(False, False, True, True),
                pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))),
                token_mixers=("repmixer", "repmixer", "repmixer", "attention"), lkc_use_act=True), **kw))
        model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{out}")
        norm = [t for t in preprocess.transforms if type(t).__name__ == "Normalize"][0]
        print("PREPROCESS", list(norm.mean), list(norm.std))
        images = torch.from_numpy(np.load("{tmp_path / 'images.npy'}"))
        with torch.no_grad():
            np.save("{tmp_path / 'proj.npy'}", model.eval().encode_image(images).numpy())
            np.save("{tmp_path / 'folded.npy'}", reparameterize_model(model.eval()).encode_image(images).numpy())
        assert not any(m == "ftclip" or m.startswith("ftclip.") for m in sys.modules)
    """
    result = _run_plain_open_clip(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PREPROCESS [0.5, 0.5, 0.5] [0.5, 0.5, 0.5]" in result.stdout  # the demo recipe's explicit mean/std
    _, ref_proj, _ = _reference(run.path, images)
    assert np.abs(np.load(tmp_path / "proj.npy") - ref_proj.numpy()).max() < 1e-5
    assert np.abs(np.load(tmp_path / "folded.npy") - ref_proj.numpy()).max() < 1e-5


def test_timm_vit_export_keeps_the_logit_bias_and_the_fitted_grid(exports):
    run, out = exports["ftclip-test-sigmoid"]
    from safetensors.torch import load_file

    from ftclip.runs import RunDir, load_module_from_run

    module, _ = load_module_from_run(RunDir(run.path))
    state = load_file(str(out / "open_clip_model.safetensors"))
    assert torch.equal(state["logit_bias"], module.backbone.model.logit_bias.detach())
    assert json.loads((out / "open_clip_config.json").read_text())["ftclip_tower"] == {"image_size": [128, 64]}
    assert state["visual.trunk.pos_embed"].shape[1] == 8 * 4
    assert "model.visual.set_input_size((128, 64))" in (out / "README.md").read_text()


# ---------------------------------------------------------------------------------------- Hugging Face
def test_hf_through_the_cli_refuses_resnet_and_timm_towers_before_writing(exports, tmp_path, capsys):
    from ftclip.cli import main

    rn, _ = exports["ftclip-tiny-rn"]
    assert main(["export", str(rn.path), "--format", "hf", "--out", str(tmp_path / "rn-exp")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ResNet (ModifiedResNet)" in err and len(err.splitlines()) == 1 and not (tmp_path / "rn-exp").exists()
    mc, _ = exports["ftclip-tiny-mobileclip"]
    assert main(["export", str(mc.path), "--format", "hf", "--out", str(tmp_path / "mc-exp")]) == 2
    err = capsys.readouterr().err
    assert "timm model (TimmModel)" in err and "bidirectional" in err and not (tmp_path / "mc-exp").exists()
    assert not list(tmp_path.iterdir())  # not even a temporary folder is left


@pytest.mark.slow
def test_hf_through_the_cli_writes_a_vit_run(tiny_reid_root, tmp_path, capsys):
    from ftclip.cli import main

    vit, _ = make_cheap_run(tiny_reid_root, tmp_path / "vit", lora=True, **{"model.image_size": "[64,64]"})
    code = main(["export", str(vit.path), "--format", "open_clip", "hf", "--text-layer", "penultimate",
                 "--out", str(tmp_path / "vit-exp")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "hf/ (transformers" in printed.out
    out = tmp_path / "vit-exp"
    meta = json.loads((out / "ftclip_export.json").read_text())
    assert meta["hf"]["text_layer"] == "penultimate" and meta["hf"]["text_encoder_layers"] == 1
    assert meta["hf"]["forgetting"] == {"measured": False,
                                        "reason": "the run started from random weights (model.pretrained is not set)"}
    assert meta["verification"]["hf"]["image_features"]["max_abs_diff"] < 1e-4
    assert "hf/" in meta["files"] and meta["versions"]["transformers"]
    assert (out / "hf" / "text_encoder" / "config.json").is_file() and (out / "hf" / "tokenizer").is_dir()
    card = (out / "README.md").read_text()
    assert "## Load it with transformers / diffusers" in card and "stabilityai/stable-diffusion-2-1" in card


@pytest.mark.slow
def test_run_export_hf_after_fit_measures_forgetting_from_the_pretrained_weights(tiny_reid_root, tmp_path):
    import open_clip

    from conftest import tiny_reid_overrides
    from ftclip.cli import main

    weights = tmp_path / "pretrained.pt"
    torch.save(open_clip.create_model("ftclip-tiny-vit", force_image_size=64).state_dict(), weights)
    overrides = tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{
        "model.image_size": "[64,64]", "model.pretrained": str(weights), "run.export": "[hf]",
        "run.hf_text_layer": "penultimate", "stages.prompts.epochs": 1, "stages.image.epochs": 1,
        "eval.before": "false"})
    assert main(["fit", "recipes/demo/reid_synthetic.yaml", *overrides]) == 0
    meta = json.loads((tmp_path / "run" / "export" / "ftclip_export.json").read_text())
    assert meta["formats"] == ["hf"] and meta["hf"]["text_layer"] == "penultimate"
    forgetting = meta["hf"]["forgetting"]
    assert "reason" not in forgetting and forgetting["prompts"] == 20 and 0 < forgetting["mean_cosine_all_positions"] <= 1
    assert (tmp_path / "run" / "export" / "hf" / "model.safetensors").is_file()


def test_bad_hf_text_layer_in_a_recipe_fails_before_training(tiny_reid_root, tmp_path):
    from conftest import tiny_reid_overrides
    from ftclip.errors import ConfigError
    from ftclip.recipe import load_recipe

    with pytest.raises(ConfigError, match="run.hf_text_layer='middle' is not allowed: it must be one of: last, penultimate"):
        load_recipe("recipes/demo/reid_synthetic.yaml",
                    tiny_reid_overrides(tiny_reid_root, tmp_path / "r", **{"run.hf_text_layer": "middle"}))
