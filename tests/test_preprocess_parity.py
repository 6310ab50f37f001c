"""Train/serve parity: an export's open_clip ``preprocess`` is exactly ftclip's evaluation input.

A user who loads an export with plain open_clip (``create_model_and_transforms('local-dir:...')``)
and feeds it PIL images must get the input tensor ftclip evaluated with (the datamodule's
validation and stage-1 cache transforms, ``ftclip embed``), for both resize kernels, on images of
odd sizes (down- and up-scaled), and so the same re-ID features and the same IQA scores.
"""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import tiny_reid_overrides
from export_helpers import DEMO, make_cheap_run, save_cheap_run

from ftclip.data.images import read_image
from ftclip.data.transforms import apply, eval_transform

SIZES = [(37, 53), (301, 97), (128, 64), (20, 11), (255, 256)]  # (height, width); 128x64 is the model's size


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([127 + 100 * np.sin(xx / (3 + c) + yy / (5 + c)) for c in range(3)], -1)
        img = np.clip(smooth + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)  # edges and noise
        path = folder / f"img_{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module", params=["bicubic", "bilinear"])
def reid_export(request, tiny_reid_root, tmp_path_factory):
    from ftclip.artifacts.export import export_run

    base = tmp_path_factory.mktemp(f"parity_{request.param}")
    run, cfg = make_cheap_run(tiny_reid_root, base / "run", **{"model.interpolation": request.param})
    return request.param, run, cfg, export_run(run.path, ["open_clip"], out=base / "export")


def _open_clip_inputs(export, paths) -> torch.Tensor:
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export}")
    return torch.stack([preprocess(Image.open(p)) for p in paths])


def test_export_preprocess_is_the_evaluation_input(reid_export, images):
    from ftclip.engine import prepare
    from ftclip.artifacts.inference import load_for_inference

    kernel, run, cfg, export = reid_export
    theirs = _open_clip_inputs(export, images)
    module, dm = prepare(cfg)
    for loader in (dm.val_dataloader(), dm.cache_dataloader()):  # what evaluation and the stage-1 cache use
        ours = torch.stack([apply(loader.dataset.transform, read_image(p)) for p in images])
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == (len(images), 3, 128, 64)
        assert float((ours - theirs).abs().max()) == 0.0
    for source in (run.path, export):  # ftclip embed / score read images through InferenceModel.preprocess
        inf = load_for_inference(source, device="cpu")
        ours = torch.stack([inf.preprocess(p) for p in images])
        assert float((ours - theirs).abs().max()) == 0.0
        with torch.no_grad():  # and so the features of plain open_clip are ftclip's
            plain = open_clip.create_model(f"local-dir:{export}").eval().encode_image(theirs)
        torch.testing.assert_close(inf.encode(ours, "proj"), torch.nn.functional.normalize(plain, dim=1),
                                   atol=1e-5, rtol=0)
    other = {"bicubic": "bilinear", "bilinear": "bicubic"}[kernel]  # the kernel really matters here
    wrong = torch.stack([apply(eval_transform((128, 64), dm.mean, dm.std, interpolation=other), read_image(p))
                         for p in images])
    assert float((wrong - theirs).abs().max()) > 0.05


def test_iqa_export_scores_through_plain_open_clip_equal_ftclip_score(tmp_path, images):
    """Plain open_clip preprocess + encode_image + the exported antonym features = ``ftclip score``."""
    from safetensors.torch import load_file

    from ftclip.recipe import load_recipe
    from ftclip.artifacts.export import export_run
    from ftclip.artifacts.inference import load_for_inference

    cfg = load_recipe("recipes/demo/iqa_synthetic.yaml", [f"run.dir={tmp_path / 'run'}", "model.interpolation=bilinear"])
    run = save_cheap_run(cfg, {"eval_sets": ["synthetic"]}, "qualiclip")
    export = export_run(run.path, ["open_clip"], out=tmp_path / "export")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export}")
    text = load_file(str(export / "text_features.safetensors"))
    with torch.no_grad():
        x = torch.nn.functional.normalize(model.eval().encode_image(torch.stack([preprocess(Image.open(p))
                                                                                 for p in images])), dim=-1)
        cos_p = x @ torch.nn.functional.normalize(text["positive"], dim=-1).t()
        cos_n = x @ torch.nn.functional.normalize(text["negative"], dim=-1).t()
        plain = torch.softmax(float(text["logit_scale"]) * torch.stack([cos_p, cos_n], -1), -1)[..., 0].mean(-1)
    for source in (export, run.path):  # what `ftclip score` computes
        inf = load_for_inference(source, device="cpu")
        got = inf.score(torch.stack([inf.preprocess(p) for p in images])).to(plain.dtype)
        assert float((got - plain).abs().max()) < 1e-6


def test_model_interpolation_wins_over_the_tag_and_says_so():
    from ftclip.backbone import resolve_interpolation

    tag = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert tag["interpolation"] == "bicubic"
    cfg = OmegaConf.create({"name": "ViT-B-16", "pretrained": "openai", "interpolation": "bilinear"})
    value, note = resolve_interpolation(cfg, tag)
    assert value == "bilinear" and "tag 'openai' says bicubic" in note
    cfg.interpolation = None
    assert resolve_interpolation(cfg, tag) == ("bicubic", "the pretrained tag 'openai'")
    assert resolve_interpolation(cfg, {}) == ("bicubic", "default")


def test_training_kernel_is_its_own_key(tiny_reid_root, tmp_path):
    from ftclip.recipe import load_recipe
    from ftclip.engine import prepare

    cfg = load_recipe(DEMO, tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{
        "model.interpolation": "bilinear", "model.train_interpolation": "bicubic"}))
    module, dm = prepare(cfg)
    assert (dm.interpolation, dm.train_interpolation) == ("bilinear", "bicubic")
    dm.set_stage("image", None)
    first = dm.train_dataloader().dataset.transform.transforms[0]
    assert type(first).__name__ == "Resize" and first.interpolation == "bicubic"
    assert dm.val_dataloader().dataset.transform.transforms[0].interpolation == "bilinear"
    assert "PIL bilinear resize (model.interpolation), training bicubic" in module.backbone.preprocess.describe()
