"""Stage qualiclip data: what the losses rely on (index 0 along L = least degraded; crops overlap as configured)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftclip.tasks.iqa.datamodule import QualiclipCrops, overlapping_crops


def test_overlapping_crops_share_the_configured_fraction_of_their_area():
    rng = np.random.default_rng(0)
    for _ in range(200):
        (y1, x1), (y2, x2) = overlapping_crops(300, 400, (96, 128), rng, 0.5, 0.9)
        assert 0 <= y1 <= 300 - 96 and 0 <= y2 <= 300 - 96 and 0 <= x1 <= 400 - 128 and 0 <= x2 <= 400 - 128
        overlap = max(0, 96 - abs(y2 - y1)) * max(0, 128 - abs(x2 - x1)) / (96 * 128)
        assert 0.5 <= overlap <= 0.9


@pytest.mark.parametrize("kind", ["blur", "noise"])
def test_crops_get_more_degraded_along_the_level_axis(tmp_path, kind):
    import cv2

    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), (200, 160), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), image)
    levels = 4
    data = QualiclipCrops([str(path)], (64, 64), [0.0] * 3, [1.0] * 3, levels, [kind], 0.5, 0.9)
    item = data[(0, 123)]
    crops = item["crops"]
    assert crops.shape == (2, levels, 3, 64, 64)
    for c in range(2):
        if kind == "blur":  # high-frequency energy falls level after level
            energy = [float((x[:, :, 1:] - x[:, :, :-1]).pow(2).mean()) for x in crops[c]]
            assert all(a > b for a, b in zip(energy, energy[1:])), energy
        else:  # the same noise field grows: distance from the least degraded crop rises
            dist = [float((x - crops[c, 0]).pow(2).mean()) for x in crops[c]]
            assert all(a < b for a, b in zip(dist, dist[1:])), dist
    assert torch.equal(data[(0, 123)]["crops"], crops)  # deterministic per (index, seed)
