"""`ftclip data check` names the data set's own identities and warns about images smaller than the crops a
recipe takes; an IQA CSV set may be given by its list file alone."""

from __future__ import annotations

from pathlib import Path

from ftclip.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes/demo/reid_synthetic.yaml")


def test_data_check_names_the_data_sets_identities(tiny_reid_root, capsys):
    # K=8 > the 4 images each identity has: every training identity is listed, by its Market-1501 id
    main(["data", "check", RECIPE, f"data.root={tiny_reid_root}", "data.synthetic=false", "data.num_instances=8"])
    out = capsys.readouterr().out
    line = next(w for w in out.splitlines() if "fewer than K=8" in w)
    raw = sorted({int(p.name[:4]) for p in (tiny_reid_root / "bounding_box_train").glob("*.jpg")})
    assert f"ids {', '.join(map(str, raw[:5]))} and {len(raw) - 5} more" in line, line


def test_data_check_warns_about_images_smaller_than_the_crops(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from ftclip.tasks.iqa.synthetic import write_synthetic_iqa

    synth = write_synthetic_iqa(tmp_path / "s", num_pristine=3, num_eval=2, size=(80, 80), levels=3,
                                kinds=("blur",), seed=0)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8) + 90).save(synth / "pristine" / "tiny.png")
    args = [str(REPO / "recipes/demo/iqa_synthetic.yaml"), "data.synthetic=false", f"data.images={synth / 'pristine'}",
            "eval.sets=[csv]", f"eval.csv.csv={synth / 'eval.csv'}", "data.levels=3"]
    assert main(["data", "check", *args]) == 0  # a warning, not an error (eval.csv given by its list file alone)
    out = capsys.readouterr().out
    assert "1 unlabeled image(s) are smaller than the 64x64 crops" in out and "tiny.png (30x40)" in out
