"""--format hf: open_clip -> transformers CLIPModel / diffusers text encoder, tokenizer parity,
refusals, the forgetting check, and one export verified in a fresh process."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

import ftclip.backbone  # noqa: F401  (registers ftclip-tiny-vit / ftclip-tiny-rn with open_clip)
from ftclip.artifacts import hf
from ftclip.errors import FtclipError

transformers = pytest.importorskip("transformers")

CONFIG_DIR = Path(ftclip.backbone.__file__).parent / "model_configs"
TINY = json.loads((CONFIG_DIR / "ftclip-tiny-vit.json").read_text())
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _meta(name="ftclip-tiny-vit", size=(64, 64), quick_gelu=False, **extra) -> dict:
    return {"model_name": name, "image_size": list(size), "mean": OPENAI_MEAN, "std": OPENAI_STD,
            "interpolation": "bicubic", "quick_gelu": quick_gelu, **extra}


def _tiny(quick_gelu=False, size=64, seed=0, name="ftclip-tiny-vit") -> torch.nn.Module:
    """A random-init tiny model with every parameter nudged away from its init (biases and LayerNorms included)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            model = open_clip.create_model(name, pretrained=None, force_image_size=size, force_quick_gelu=quick_gelu)
        finally:
            logging.disable(logging.NOTSET)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return model.eval()


def _images(n=3, size=64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def _tokens(prompts=hf.VERIFY_PROMPTS) -> torch.Tensor:
    return open_clip.tokenizer.SimpleTokenizer()(list(prompts))


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.float().reshape(-1, want.shape[-1]), want.float().reshape(-1, want.shape[-1])
    assert (got - want).abs().max() < 1e-4 * max(1.0, float(want.abs().max()))
    assert F.cosine_similarity(got, want, dim=-1).min() >= 0.999


# ---------------------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("quick_gelu", [False, True])
def test_clip_model_weights_reproduce_open_clip(quick_gelu):
    model = _tiny(quick_gelu)
    arch = hf.check_hf_compatible(model, _meta(quick_gelu=quick_gelu))
    assert arch["vision"]["hidden_act"] == arch["text"]["hidden_act"] == ("quick_gelu" if quick_gelu else "gelu")
    config, _ = hf.hf_configs(arch, float(model.logit_scale.detach()), "last")
    assert config.text_config.eos_token_id == 49407 and config.text_config.bos_token_id == 49406
    assert config.text_config.layer_norm_eps == config.vision_config.layer_norm_eps == 1e-5
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (64, 16)
    assert config.text_config.intermediate_size == 4 * 64 and config.projection_dim == 64
    ours = transformers.CLIPModel(config).eval()
    ours.load_state_dict(hf.clip_state_dict(model), strict=True)  # every key, every shape
    images, tokens = _images(), _tokens()
    with torch.no_grad():
        _close(ours.get_image_features(pixel_values=images).pooler_output, model.encode_image(images))
        _close(ours.get_text_features(input_ids=tokens).pooler_output, model.encode_text(tokens))
        _close(ours.text_model(input_ids=tokens).last_hidden_state, hf.text_token_states(model, tokens, "last"))
        assert float(ours.logit_scale) == pytest.approx(float(model.logit_scale))


def test_text_states_match_open_clip_and_penultimate_encoder():
    model = _tiny()
    tokens = _tokens()
    with torch.no_grad():
        last = hf.text_token_states(model, tokens, "last")
        penultimate = hf.text_token_states(model, tokens, "penultimate")
        # open_clip's own pieces: pooled 'last' states are encode_text; its intermediates give both layers
        eot = tokens.argmax(dim=1)
        _close(last[torch.arange(len(tokens)), eot] @ model.text_projection, model.encode_text(tokens))
        inter = model.forward_intermediates(text=tokens, text_indices=2, normalize_intermediates=True,
                                            intermediates_only=True)["text_intermediates"]
        _close(penultimate, inter[0])
        _close(last, inter[1])
        arch = hf.check_hf_compatible(model, _meta())
        _, encoder_config = hf.hf_configs(arch, 1.0, "penultimate")
        assert encoder_config.num_hidden_layers == TINY["text_cfg"]["layers"] - 1
        assert encoder_config.pad_token_id == 0  # SD 2.x pads with "!"
        encoder = transformers.CLIPTextModel(encoder_config).eval()
        state = hf.text_state_dict(model, encoder_config.num_hidden_layers)
        encoder.load_state_dict({k.removeprefix("text_model."): v for k, v in state.items()}, strict=True)
        _close(encoder(input_ids=tokens).last_hidden_state, penultimate)


# ---------------------------------------------------------------------------------------- tokenizer
PARITY_PROMPTS = [
    "a photo of a cat.", "A PHOTO  of   THE Dog!!", "Hello, world: it's a test; (really) \"quoted\"?",
    "café naïve RÉSUMÉ", "1234 numbers 5.6 and 7th", "don't can't I'm you're we'll they'd",
    "an emoji \U0001F431 cat", "  leading and trailing  ", "tab\tand\nnewline", "hyphen-ated under_score a/b",
    "x" * 300, " ".join(["long prompt"] * 60), "",
]


def test_tokenizer_matches_open_clip_simple_tokenizer():
    reference = open_clip.tokenizer.SimpleTokenizer()(PARITY_PROMPTS)
    tokenizer = hf.build_tokenizer(hf.EOS)
    ids = tokenizer(PARITY_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    # identical up to and including the end-of-text token (truncated prompts too), <|endoftext|> after it
    assert torch.equal(ids["input_ids"], hf.open_clip_ids(reference, 49407))
    assert len(tokenizer) == 49408 and tokenizer.pad_token_id == 49407
    sd2 = hf.build_tokenizer(hf.BANG)  # SD 2.x layout: pads with "!" (id 0), exactly open_clip's padding
    plain = [p for p in PARITY_PROMPTS if "!" not in p]
    ids = sd2(plain, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, open_clip.tokenizer.SimpleTokenizer()(plain))


def test_tokenizer_files(tmp_path):
    hf.write_tokenizer(tmp_path, hf.BANG, 77)
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= {p.name for p in tmp_path.iterdir()}
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["pad_token"] == "!"
    loaded = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    body = open_clip.tokenizer.SimpleTokenizer().encode("a photo of a cat")
    assert loaded("a photo of a cat")["input_ids"] == [49406, *body, 49407] and loaded.model_max_length == 77


# ---------------------------------------------------------------------------------------- image processor
def test_image_processor_is_ftclip_eval_preprocessing():
    from ftclip.data.transforms import apply, eval_transform

    processor = hf.image_processor(_meta(), 64)
    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    got = processor(images=[same], return_tensors="pt")["pixel_values"][0]
    want = apply(eval_transform((64, 64), OPENAI_MEAN, OPENAI_STD), same)
    assert (got - want).abs().max() < 1e-5  # no crop, same scaling and normalisation
    y, x = np.mgrid[0:300, 0:200]  # a smooth non-square image: squashed to 64x64 (not cropped) by both
    smooth = np.stack([x * 255 / 200, y * 255 / 300, (x + y) * 255 / 500], -1).astype(np.uint8)
    got = processor(images=[smooth], return_tensors="pt")["pixel_values"][0]
    want = apply(eval_transform((64, 64), OPENAI_MEAN, OPENAI_STD), smooth)
    assert got.shape == want.shape == (3, 64, 64)
    assert (got - want).abs().mean() < 0.02  # torchvision (antialiased) vs PIL bicubic: close, not equal


# ---------------------------------------------------------------------------------------- refusals
def _custom(**text_changes) -> torch.nn.Module:
    return open_clip.CustomTextCLIP(TINY["embed_dim"], TINY["vision_cfg"], dict(TINY["text_cfg"], **text_changes))


def _plain(vision_changes=None, text_changes=None) -> torch.nn.Module:
    return open_clip.CLIP(TINY["embed_dim"], dict(TINY["vision_cfg"], **(vision_changes or {})),
                          dict(TINY["text_cfg"], **(text_changes or {})))


@pytest.mark.parametrize("build, meta, reason", [
    (lambda: _tiny(size=(128, 64)), _meta(size=(128, 64)), "non-square input 128x64"),
    (lambda: _tiny(name="ftclip-tiny-rn"), _meta("ftclip-tiny-rn"), "ResNet (ModifiedResNet)"),
    (lambda: _custom(), _meta(), "CustomTextCLIP"),
    (lambda: _custom(no_causal_mask=True), _meta(), "bidirectional"),
    (lambda: _plain(text_changes={"no_causal_mask": True}), _meta(), "bidirectional (no causal mask)"),
    (lambda: _plain({"attentional_pool": True}), _meta(), "attentional pooling"),
    (lambda: _plain({"pool_type": "avg"}), _meta(), "pools 'avg'"),
    (lambda: _plain({"ls_init_value": 0.1}), _meta(), "layer scale"),
    (lambda: _plain(text_changes={"pool_type": "last"}), _meta(), "pools 'last'"),
    (lambda: _tiny(), _meta(quick_gelu=True), "quick_gelu=True but the towers use gelu"),
])
def test_refusals_name_the_reason(build, meta, reason):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
    with pytest.raises(FtclipError, match="cannot be written as a transformers CLIPModel") as err:
        hf.check_hf_compatible(model, meta)
    assert reason in str(err.value)


def test_bad_text_layer_and_existing_folder(tmp_path):
    model = _tiny()
    with pytest.raises(FtclipError, match="--text-layer 'middle'"):
        hf.export_hf(model, _meta(), tmp_path, text_layer="middle")
    (tmp_path / "hf").mkdir()
    with pytest.raises(FtclipError, match="already exists; export into a new folder"):
        hf.export_hf(model, _meta(), tmp_path)


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    """A transformers check that does not reproduce open_clip fails the export with its figures; no hf/ or temp."""
    def bad_report(hf_dir, expected, spec, timeout):
        assert (Path(hf_dir) / "model.safetensors").is_file()  # written before the check, into the temp folder
        fig = {"max_abs_diff": 0.5, "magnitude": 1.0, "min_cosine": 0.9}
        good = {"max_abs_diff": 0.0, "magnitude": 1.0, "min_cosine": 1.0}
        return {"loading": {"CLIPModel": {"missing_keys": ["visual_projection.weight"]}, "text_encoder": {}},
                "image_features": fig, "text_features": good, "last_hidden_state": good,
                "text_encoder_last_hidden_state": good, "image_processor": good, "logit_scale_abs_diff": 0.0,
                "tokenizer_mismatches": [], "diffusers_tokenizer_mismatches": [],
                "image_processor_output_size": [64, 64], "image_size": [64, 64], "ftclip_imported": False}

    monkeypatch.setattr(hf, "_run_verification", bad_report)
    with pytest.raises(FtclipError) as err:
        hf.export_hf(_tiny(), _meta(), tmp_path)
    message = str(err.value)
    assert "image_features: max abs diff 0.5" in message and "min cosine 0.900000" in message
    assert "missing_keys ['visual_projection.weight']" in message and "nothing was written" in message
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- forgetting
def test_forgetting_check_against_plain_cosines():
    pretrained = _tiny()
    same = hf.forgetting_check(pretrained, copy.deepcopy(pretrained))
    assert same["mean_cosine_all_positions"] == pytest.approx(1.0, abs=1e-6)
    image_only = copy.deepcopy(pretrained)  # e.g. re-ID stage 2: only the image tower trained
    with torch.no_grad():
        image_only.visual.proj.add_(1.0)
    assert hf.forgetting_check(image_only, pretrained)["min_prompt_mean_cosine"] == pytest.approx(1.0, abs=1e-6)

    tuned = copy.deepcopy(pretrained)
    with torch.no_grad():
        tuned.transformer.resblocks[0].mlp.c_fc.weight.add_(0.3 * torch.randn_like(tuned.transformer.resblocks[0].mlp.c_fc.weight))
    got = hf.forgetting_check(tuned, pretrained, "last")
    tokens = open_clip.tokenizer.SimpleTokenizer()(list(hf.FORGETTING_PROMPTS))
    tokens = hf.open_clip_ids(tokens, 49407)  # SD 1.x pads with <|endoftext|>
    cosines, own = [], []
    with torch.no_grad():
        for row in tokens:  # plain reference: encode one prompt at a time, position by position
            a = hf.text_token_states(tuned, row[None], "last")[0]
            b = hf.text_token_states(pretrained, row[None], "last")[0]
            eot = int((row == 49407).nonzero()[0])
            c = ((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))).tolist()
            cosines += c
            own += c[:eot + 1]
    assert got["mean_cosine_all_positions"] == pytest.approx(np.mean(cosines), abs=1e-5)
    assert got["mean_cosine_prompt_tokens"] == pytest.approx(np.mean(own), abs=1e-5)
    assert got["mean_cosine_all_positions"] < 0.999 and got["prompts"] == 20
    assert f"{got['mean_cosine_all_positions']:.4f}" in got["markdown"] and "SD 1.x" in got["markdown"]


# ---------------------------------------------------------------------------------------- fresh-process export
def _check_export(tmp_path: Path, quick_gelu: bool, text_layer: str) -> dict:
    pretrained = _tiny(quick_gelu)
    tuned = copy.deepcopy(pretrained)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(0.01 * torch.randn_like(param))
    report = hf.export_hf(tuned, _meta(quick_gelu=quick_gelu), tmp_path, text_layer=text_layer, reference=pretrained)
    out = tmp_path / "hf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp folder left
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    act = "quick_gelu" if quick_gelu else "gelu"
    assert config["architectures"] == ["CLIPModel"]
    assert config["text_config"]["hidden_act"] == config["vision_config"]["hidden_act"] == act
    assert config["text_config"]["eos_token_id"] == 49407 and config["vision_config"]["image_size"] == 64
    encoder = json.loads((out / "text_encoder" / "config.json").read_text())
    layers = TINY["text_cfg"]["layers"] - (text_layer == "penultimate")
    assert encoder["architectures"] == ["CLIPTextModel"] and encoder["num_hidden_layers"] == layers
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 64, "width": 64} and processor["do_center_crop"] is False
    assert processor["image_mean"] == OPENAI_MEAN and processor["resample"] == 3
    pad = json.loads((out / "tokenizer" / "special_tokens_map.json").read_text())["pad_token"]
    assert pad == ("!" if text_layer == "penultimate" else "<|endoftext|>")

    v = report["verification"]
    assert hf.verification_failures(v) == [] and v["ftclip_imported"] is False
    assert v["loading"] == {"CLIPModel": {}, "text_encoder": {}}
    for name in ("image_features", "text_features", "last_hidden_state", "text_encoder_last_hidden_state"):
        assert v[name]["max_abs_diff"] < 1e-4 and v[name]["min_cosine"] >= 0.999
    drift = report["forgetting"]
    assert 0.0 < drift["mean_cosine_all_positions"] < 1.0 and drift["text_layer"] == text_layer
    assert "Text tower drift" in report["model_card"] and "text_encoder" in report["model_card"]
    return report


def test_export_reloads_in_a_fresh_transformers_process(tmp_path):
    """The tiny demo model (QuickGELU, SD 2.x layout): loaded by transformers in a process without ftclip."""
    _check_export(tmp_path, quick_gelu=True, text_layer="penultimate")


@pytest.mark.slow
def test_export_last_layer_gelu_and_no_reference(tmp_path):
    first = _check_export(tmp_path / "a", quick_gelu=False, text_layer="last")
    assert first["pad_token"] == {"CLIPModel": "<|endoftext|>", "tokenizer": "<|endoftext|>"}
    second = hf.export_hf(_tiny(), _meta(), tmp_path / "b", text_layer="last",
                          no_reference_reason="the run started from random weights")
    assert second["forgetting"] == {"measured": False, "reason": "the run started from random weights"}
    assert "Not measured for this export: the run started from random weights." in second["model_card"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["hf"]
