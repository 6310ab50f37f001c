"""ftclip export: layout, plain-open_clip round trip (in a subprocess without ftclip), ONNX parity, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from export_helpers import make_cheap_run

from ftclip.errors import FtclipError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lora_export(tiny_reid_root, tmp_path_factory):
    """A LoRA run (adapters to merge) exported with both formats, shared by this module's tests."""
    from ftclip.artifacts.export import export_run

    base = tmp_path_factory.mktemp("export")
    run, cfg = make_cheap_run(tiny_reid_root, base / "run", lora=True)
    out = export_run(run.path, ["open_clip", "onnx"], out=base / "exp")
    return run, cfg, out


def _reference(run_path: Path, images: torch.Tensor):
    """The trained module (LoRA unmerged) straight from the run: encode_image and the task feature."""
    from ftclip.runs import load_module_from_run
    from ftclip.runs import RunDir

    module, _ = load_module_from_run(RunDir(run_path))
    with torch.no_grad():
        return module, module.backbone.encode_image(images).float(), module.embed(images).float()


def _run_plain_open_clip(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that must never import ftclip."""
    guard = textwrap.dedent("""
        import sys
        class _NoFtclip:
            def find_spec(self, name, path=None, target=None):
                if name == "ftclip" or name.startswith("ftclip."):
                    raise ImportError("ftclip must not be imported in this check")
        sys.meta_path.insert(0, _NoFtclip())
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_layout_and_metadata(lora_export):
    from ftclip.recipe import config_hash

    run, cfg, out = lora_export
    names = {p.name for p in out.iterdir()}
    assert {"open_clip_model.safetensors", "open_clip_config.json", "ftclip_export.json", "text_features.safetensors",
            "prompts.safetensors", "heads.safetensors", "README.md", "image_encoder.onnx"} <= names
    assert "text_encoder.onnx" not in names  # re-ID's text side is the fixed per-ID features
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".exp.")]  # no temp folders left
    meta = json.loads((out / "ftclip_export.json").read_text())
    assert meta["model_name"] == "ftclip-tiny-vit" and meta["image_size"] == [128, 64]
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["quick_gelu"] is False
    assert meta["task"] == "reid" and meta["feature"] == "final+proj" and meta["lora_merged"] is True
    assert meta["recipe_hash"] == config_hash(run.load_config())
    assert meta["final_metrics"]["mAP"] == 0.5
    assert {"ftclip", "torch", "open_clip"} <= set(meta["versions"])
    assert meta["verification"]["encode_image_max_abs_diff"] < 1e-5
    oc = json.loads((out / "open_clip_config.json").read_text())
    assert oc["model_cfg"]["vision_cfg"]["image_size"] == [128, 64] and oc["model_cfg"]["quick_gelu"] is False
    assert oc["preprocess_cfg"]["resize_mode"] == "squash" and oc["preprocess_cfg"]["size"] == [128, 64]
    card = (out / "README.md").read_text()
    assert "local-dir:" in card and "force_image_size=(128, 64)" in card and "| image |" in card


def test_merged_weights_are_stock_open_clip_keys(lora_export):
    import open_clip
    from safetensors.torch import load_file

    _, _, out = lora_export
    state = load_file(str(out / "open_clip_model.safetensors"))
    stock = open_clip.create_model("ftclip-tiny-vit", force_image_size=(128, 64)).state_dict()
    assert set(state) == set(stock)
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in stock.items())


def test_text_features_prompts_and_heads_match_the_run(lora_export):
    from safetensors.torch import load_file

    run, _, out = lora_export
    module, _, _ = _reference(run.path, torch.zeros(1, 3, 128, 64))  # a fresh load in this process
    text = load_file(str(out / "text_features.safetensors"))
    assert text["id_text_features"].shape == (8, 64)
    torch.testing.assert_close(text["id_text_features"], module.export_tensors()["text_features"]["id_text_features"],
                               rtol=0, atol=1e-6)
    assert torch.equal(load_file(str(out / "prompts.safetensors"))["ctx"], module.prompts.ctx.detach())
    heads = load_file(str(out / "heads.safetensors"))
    assert torch.equal(heads["neck.classifier.weight"], module.head.neck.classifier.weight.detach())
    assert set(heads) == set(module.head.state_dict())


def test_plain_open_clip_reloads_the_export_in_a_subprocess(lora_export, tmp_path):
    """The done-when check: open_clip alone (ftclip import blocked) reproduces the trained model, loaded
    (1) as a local-dir: model, with the model card's task-feature snippet, and (2) with the one-liner
    ``create_model_and_transforms(NAME, pretrained=<file>, force_image_size=(h, w))`` (the tiny model is
    registered from its JSON the way any user registers a custom config: open_clip.add_model_config)."""
    run, _, out = lora_export
    meta = json.loads((out / "ftclip_export.json").read_text())
    images = torch.randn(3, 3, 128, 64, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "images.npy", images.numpy())
    card_snippet = (out / "README.md").read_text().split("```python\nimport torch, torch.nn.functional as F\n")[1]
    card_snippet = "import torch, torch.nn.functional as F\n" + card_snippet.split("```")[0]
    code = f"""
        import numpy as np, torch, open_clip
        exec({card_snippet!r})
        images = torch.from_numpy(np.load("{tmp_path / 'images.npy'}"))
        model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{out}")
        model.eval()
        with torch.no_grad():
            np.save("{tmp_path / 'proj.npy'}", model.encode_image(images).numpy())
        np.save("{tmp_path / 'task.npy'}", task_feature(model, images).numpy())
        sizes = [list(t.size) for t in preprocess.transforms if type(t).__name__ == "Resize"]
        norm = [t for t in preprocess.transforms if type(t).__name__ == "Normalize"][0]
        print("PREPROCESS", sizes, list(norm.mean), list(norm.std))
        open_clip.add_model_config("{REPO / 'ftclip' / 'model_configs' / 'ftclip-tiny-vit.json'}")
        model, _, preprocess = {meta['open_clip_one_liner']}
        model.eval()
        with torch.no_grad():
            np.save("{tmp_path / 'proj_one_liner.npy'}", model.encode_image(images).numpy())
        assert not any(m == "ftclip" or m.startswith("ftclip.") for m in sys.modules)
    """
    result = _run_plain_open_clip(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PREPROCESS [[128, 64]] [0.5, 0.5, 0.5] [0.5, 0.5, 0.5]" in result.stdout
    _, ref_proj, ref_task = _reference(run.path, images)
    assert np.abs(np.load(tmp_path / "proj.npy") - ref_proj.numpy()).max() < 1e-5
    assert np.abs(np.load(tmp_path / "task.npy") - ref_task.numpy()).max() < 1e-5
    assert np.abs(np.load(tmp_path / "proj_one_liner.npy") - ref_proj.numpy()).max() < 1e-5


def test_onnx_image_encoder_matches_torch_with_any_batch(lora_export):
    import onnxruntime as ort

    run, _, out = lora_export
    session = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["image_features", "final_features"]
    for batch in (1, 5):
        images = torch.randn(batch, 3, 128, 64, generator=torch.Generator().manual_seed(batch))
        proj, final = session.run(None, {"image": images.numpy()})
        _, ref_proj, ref_task = _reference(run.path, images)
        assert np.abs(proj - ref_proj.numpy()).max() < 1e-4
        task = torch.nn.functional.normalize(torch.cat([torch.from_numpy(final), torch.from_numpy(proj)], 1), dim=1)
        assert (task - ref_task).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------- errors
def test_run_without_checkpoint_is_one_clear_error(tiny_reid_root, tmp_path):
    from ftclip.recipe import load_recipe
    from ftclip.artifacts.export import export_run
    from ftclip.runs import RunDir

    from conftest import tiny_reid_overrides

    cfg = load_recipe("recipes/demo/reid_synthetic.yaml", tiny_reid_overrides(tiny_reid_root, tmp_path / "run"))
    RunDir.create(cfg)
    with pytest.raises(FtclipError, match="is not finished: no stage is finished: stage 'prompts' is not started"):
        export_run(tmp_path / "run", ["open_clip"], out=tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


def test_cli_errors_exit_2_with_one_line(lora_export, tmp_path, capsys):
    from ftclip.cli import main

    run, _, out = lora_export
    cases = [
        (["export", str(run.path), "--format", "tflite", "--out", str(tmp_path / "x")], "unknown export format"),
        (["export", str(run.path), "--out", str(out)], "already exists; pass --overwrite"),
        (["export", str(tmp_path), "--out", str(tmp_path / "y")], "is not an ftclip run directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_unknown_format_in_recipe_fails_before_training(tiny_reid_root, tmp_path):
    from ftclip.recipe import load_recipe
    from ftclip.errors import ConfigError

    from conftest import tiny_reid_overrides

    with pytest.raises(ConfigError, match=r"run.export=\['torchscript'\] is not allowed: it must be a list \(each one "
                                          r"of: open_clip, onnx, hf\)"):
        load_recipe("recipes/demo/reid_synthetic.yaml",
                    tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{"run.export": "[torchscript]"}))


def test_overwrite_replaces_and_verification_failure_keeps_the_old_export(tiny_reid_root, tmp_path, monkeypatch):
    import ftclip.artifacts.export as export_mod
    from ftclip.cli import main

    run, _ = make_cheap_run(tiny_reid_root, tmp_path / "run")
    out = tmp_path / "exp"
    assert main(["export", str(run.path), "--out", str(out)]) == 0
    first = json.loads((out / "ftclip_export.json").read_text())
    assert main(["export", str(run.path), "--out", str(out), "--overwrite"]) == 0
    assert (out / "open_clip_model.safetensors").is_file()
    assert json.loads((out / "ftclip_export.json").read_text())["sha256"] == first["sha256"]  # same weights, same bytes
    before = (out / "ftclip_export.json").read_text()

    real_loader = export_mod.load_open_clip_export

    def corrupted(path, device="cpu"):  # a reload that does not reproduce the model
        model = real_loader(path, device)
        with torch.no_grad():
            model.visual.proj.add_(1e-3)
        return model

    monkeypatch.setattr(export_mod, "load_open_clip_export", corrupted)
    with pytest.raises(export_mod.ExportVerificationError, match=r"encode_image: max abs diff [0-9.e-]+ \(tolerance"):
        export_mod.export_run(run.path, ["open_clip"], out=out, overwrite=True)
    assert (out / "ftclip_export.json").read_text() == before  # the previous export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "run"]  # no temp folder left behind
