"""CMC/mAP against a straightforward per-query reference of the Market-1501 protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftclip.errors import FtclipError
from ftclip.tasks.reid.metrics import cmc_map_from_distances, evaluate_reid


def reference_cmc_map(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    max_rank: int = 50,
) -> tuple[float, np.ndarray, int]:
    """The protocol written plainly: one query at a time."""
    all_ap, all_cmc = [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        keep = (g_pids[order] != -1) & ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        matches = (g_pids[order][keep] == q_pids[i]).astype(np.float64)
        if not matches.any():
            continue
        hit_positions = np.flatnonzero(matches)
        cmc = np.zeros(max_rank)
        cmc[hit_positions[0] :] = 1.0  # numpy clips the slice at max_rank
        all_cmc.append(cmc)
        precisions = [(k + 1) / (pos + 1) for k, pos in enumerate(hit_positions)]
        all_ap.append(np.mean(precisions))
    return float(np.mean(all_ap)), np.mean(all_cmc, axis=0), len(all_ap)


def make_data(seed: int, num_q: int = 37, num_g: int = 211, dim: int = 16, num_ids: int = 12, num_cams: int = 4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_ids + 1, dim))
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[rng.random(num_g) < 0.15] = 0  # distractors
    g_pids[rng.random(num_g) < 0.10] = -1  # junk
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, num_g)

    def feats(pids: np.ndarray) -> np.ndarray:
        f = centers[np.clip(pids, 0, None)] * 0.6 + rng.normal(size=(len(pids), dim))
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    return feats(q_pids), feats(g_pids), q_pids, g_pids, q_cams, g_cams


def sqeuclidean(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    return (qf**2).sum(1)[:, None] + (gf**2).sum(1)[None, :] - 2 * qf @ gf.T


def assert_matches_reference(result: dict, ref: tuple[float, np.ndarray, int]) -> None:
    ref_map, ref_cmc, ref_valid = ref
    assert result["num_valid_queries"] == ref_valid
    assert result["mAP"] == pytest.approx(ref_map, abs=1e-6)
    np.testing.assert_allclose(result["cmc"], ref_cmc, atol=1e-6)
    assert (result["rank1"], result["rank5"], result["rank10"]) == pytest.approx(
        (ref_cmc[0], ref_cmc[4], ref_cmc[9]), abs=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [None, 1, 5, 1000])
def test_matches_reference_sqeuclidean(seed: int, chunk_size: int | None) -> None:
    qf, gf, qp, gp, qc, gc = make_data(seed)
    ref = reference_cmc_map(sqeuclidean(qf, gf), qp, gp, qc, gc)
    result = evaluate_reid(qf, gf, qp, gp, qc, gc, chunk_size=chunk_size)
    assert_matches_reference(result, ref)
    assert len(result["cmc"]) == 50


def test_matches_reference_cosine_torch_float32_inputs() -> None:
    qf, gf, qp, gp, qc, gc = make_data(3)
    ref = reference_cmc_map(1.0 - qf.astype(np.float32) @ gf.astype(np.float32).T, qp, gp, qc, gc, max_rank=20)
    result = evaluate_reid(
        torch.from_numpy(qf).float(),
        torch.from_numpy(gf).float(),
        torch.from_numpy(qp),
        torch.from_numpy(gp),
        qc.tolist(),
        gc.tolist(),
        metric="cosine",
        max_rank=20,
        chunk_size=7,
    )
    assert_matches_reference(result, ref)


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_ties_follow_gallery_order(chunk_size: int | None) -> None:
    """Duplicated gallery features give exact ties; the stable order decides (lower index first)."""
    rng = np.random.default_rng(5)
    qf, gf, qp, gp, qc, gc = make_data(4, num_q=9, num_g=60, dim=4, num_ids=5, num_cams=3)
    gf = np.round(gf * 2) / 2  # few distinct vectors -> many equal distances
    qf = np.round(qf * 2) / 2
    dist = sqeuclidean(qf, gf)
    assert len(np.unique(dist)) < dist.size / 5
    ref = reference_cmc_map(dist, qp, gp, qc, gc)
    assert_matches_reference(evaluate_reid(qf, gf, qp, gp, qc, gc, chunk_size=chunk_size), ref)
    perm = rng.permutation(len(gp))
    ref_perm = reference_cmc_map(dist[:, perm], qp, gp[perm], qc, gc[perm])
    assert_matches_reference(cmc_map_from_distances(dist[:, perm], qp, gp[perm], qc, gc[perm]), ref_perm)


def test_distance_matrix_entry_point_matches_reference() -> None:
    qf, gf, qp, gp, qc, gc = make_data(6)
    dist = sqeuclidean(qf, gf)
    ref = reference_cmc_map(dist, qp, gp, qc, gc)
    assert_matches_reference(cmc_map_from_distances(dist, qp, gp, qc, gc, chunk_size=3), ref)
    assert_matches_reference(cmc_map_from_distances(torch.from_numpy(dist), qp, gp, qc, gc), ref)


def test_hand_made_example() -> None:
    """Ranking: hit, miss, hit -> AP = (1/1 + 2/3) / 2; same-camera match and junk are dropped."""
    dist = np.array([[0.1, 0.2, 0.3, 0.05, 0.25, 0.01]])
    q_pids, q_cams = [7], [0]
    g_pids = [7, 3, 7, 7, -1, 0]  # index 3: same pid, same camera; index 5: distractor
    g_cams = [1, 1, 2, 0, 1, 2]
    # remaining order by distance: distractor(0.01), pid7(0.1), pid3(0.2), pid7(0.3) -> hits at ranks 2 and 4
    result = cmc_map_from_distances(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result["cmc"] == [0.0, 1.0, 1.0, 1.0, 1.0]

    dist[0, 5] = 0.5  # the distractor moves to the end: hit, miss, hit
    result = cmc_map_from_distances(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert result["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result["rank1"] == 1.0


def test_query_with_only_same_camera_matches_is_skipped() -> None:
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    q_pids, q_cams = [1, 2], [0, 0]
    g_pids, g_cams = [1, 2, 2], [1, 0, 0]  # query 1 (pid 2) only has same-camera matches
    result = cmc_map_from_distances(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    assert result["num_valid_queries"] == 1
    assert result["mAP"] == 1.0
    assert result["cmc"] == [1.0, 1.0, 1.0]


def test_max_rank_larger_than_gallery_pads_with_last_value() -> None:
    dist = np.array([[0.3, 0.1, 0.2]])
    result = cmc_map_from_distances(dist, [1], [1, 2, 3], [0], [1, 1, 1], max_rank=6)
    assert result["cmc"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert result["rank10"] == 1.0
    assert result["mAP"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "euclid"}, "metric='euclid'"),
        ({"max_rank": 0}, "max_rank=0"),
        ({"chunk_size": 0}, "chunk_size=0"),
    ],
)
def test_bad_options_raise(kwargs: dict, message: str) -> None:
    qf, gf, qp, gp, qc, gc = make_data(0)
    with pytest.raises(FtclipError, match=message):
        evaluate_reid(qf, gf, qp, gp, qc, gc, **kwargs)


def test_bad_inputs_raise() -> None:
    qf, gf, qp, gp, qc, gc = make_data(0)
    with pytest.raises(FtclipError, match="dimension"):
        evaluate_reid(qf, gf[:, :8], qp, gp, qc, gc)
    with pytest.raises(FtclipError, match="gallery_pids"):
        evaluate_reid(qf, gf, qp, gp[:-1], qc, gc)
    with pytest.raises(FtclipError, match="query_camids must hold integers"):
        evaluate_reid(qf, gf, qp, gp, qc.astype(float), gc)
    bad = qf.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FtclipError, match="query_feats contains NaN"):
        evaluate_reid(bad, gf, qp, gp, qc, gc)
    with pytest.raises(FtclipError, match="no query"):
        evaluate_reid(qf, gf, qp + 100, gp, qc, gc)
