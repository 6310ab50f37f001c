"""The open_clip wrapper: injected text embeddings, ReID features, grid resize, weight loading."""

from __future__ import annotations

import open_clip
import pytest
import torch
from omegaconf import OmegaConf

from ftclip.backbone import Backbone, resize_grid_embedding
from ftclip.config import ModelConfig
from ftclip.tasks.reid.features import reid_features
from ftclip.errors import ConfigError, FtclipError


def make(name="ftclip-tiny-vit", size=(128, 64), **kw) -> Backbone:
    return Backbone.from_config(OmegaConf.structured(ModelConfig(name=name, image_size=list(size), **kw))).eval()


def test_text_tower_on_injected_embeddings_equals_encode_text():
    b = make()
    tokens = b.tokenize(["a photo of a x x x x person.", "bad photo."])
    out = b.encode_text_embeddings(b.embed_tokens(tokens), tokens.argmax(-1))
    assert torch.allclose(out, b.encode_text(tokens), atol=1e-6)


def test_reid_features_match_encode_image_and_shapes():
    b = make()
    x = torch.randn(3, 3, 128, 64)
    f = reid_features(b, x)
    assert f.last.shape == (3, 64) and f.final.shape == (3, 64) and f.proj.shape == (3, 64)
    assert torch.allclose(f.proj, b.encode_image(x), atol=1e-6)
    offset = torch.randn(3, 64)
    assert not torch.allclose(reid_features(b, x, offset).proj, f.proj)


def test_non_square_grid_and_bilinear_resize():
    b = make(size=(256, 128))
    assert tuple(b.visual.grid_size) == (16, 8)
    pos = torch.randn(1 + 14 * 14, 8)
    out = resize_grid_embedding(pos, (16, 8))
    assert out.shape == (1 + 16 * 8, 8)
    assert torch.equal(out[0], pos[0])  # class position kept
    constant = torch.ones(1 + 14 * 14, 8)
    assert torch.allclose(resize_grid_embedding(constant, (16, 8)), torch.ones(1 + 128, 8))


def test_load_square_checkpoint_into_non_square_model(tmp_path):
    square = open_clip.create_model("ftclip-tiny-vit")  # 64x64 -> 4x4 grid
    path = tmp_path / "w.pt"
    torch.save(square.state_dict(), path)
    b = make(size=(128, 64), pretrained=str(path))
    assert torch.equal(b.model.visual.conv1.weight, square.visual.conv1.weight)
    assert b.model.visual.positional_embedding.shape[0] == 1 + 8 * 4


def test_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    src = make()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    b = make(pretrained=str(path))
    x = torch.randn(2, 3, 128, 64)
    assert torch.equal(b.encode_image(x), src.encode_image(x))


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    other = open_clip.create_model("ftclip-tiny-rn")
    path = tmp_path / "rn.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(FtclipError, match="does not fit this model architecture"):
        make(pretrained=str(path))


def test_bad_model_inputs():
    with pytest.raises(ConfigError, match="not an open_clip model"):
        make(name="ViT-Q-99")
    with pytest.raises(ConfigError, match="patch size"):
        make(size=(100, 64))
    with pytest.raises(ConfigError, match="square"):
        make(name="ftclip-tiny-rn", size=(128, 64))
    with pytest.raises(ConfigError, match="pretrained tag"):
        make(name="ViT-B-16", size=(224, 224), pretrained="no-such-tag")


def test_offline_tag_says_how_to_supply_weights(tmp_path):
    with pytest.raises(FtclipError, match="model.pretrained=/path/to"):
        make(name="ViT-B-16", size=(224, 224), pretrained="openai", cache_dir=str(tmp_path))


def test_parameter_groups_are_disjoint_and_complete():
    b = make()
    groups = b.parameter_groups()
    names = [n for params in groups.values() for n, _ in params]
    assert len(names) == len(set(names)) == len(list(b.model.parameters()))
    assert all(n.startswith("model.visual.") for n, _ in groups["image"])
    assert [n for n, _ in groups["logit_scale"]] == ["model.logit_scale"]
