"""Re-identification metrics: CMC and mAP under the Market-1501 protocol, vectorised in torch.

Protocol (as the reference CLIP-ReID / Market-1501 evaluation):

* gallery entries with pid ``-1`` (junk) are dropped for every query;
* per query, gallery entries with the query's pid *and* camera are dropped;
* a query with no remaining same-pid gallery entry is skipped (not counted);
* CMC[k] = fraction of valid queries with a match within the first k+1 ranks;
* AP = mean of the precision at each match's rank; mAP = mean AP over valid queries;
* distractors (pid ``0``) stay in the gallery as non-matches;
* equal distances are ranked by gallery index (a stable sort).

Instead of sorting every gallery row, each query's few same-pid gallery entries are sorted
and every gallery entry is counted into the gap between two of them (``searchsorted`` +
``scatter_add``): this gives the exact rank of every match at a fraction of a full sort's cost,
with no Python loop over queries, on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ftclip.errors import FtclipError

JUNK_PID = -1
METRICS = ("sqeuclidean", "cosine")
_CHUNK_BYTES = 256 * 2**20  # chunk_size * gallery * 8 bytes stays about this size

ArrayLike = Tensor | np.ndarray | Sequence[Any]


def evaluate_reid(
    query_feats: ArrayLike,
    gallery_feats: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    max_rank: int = 50,
    chunk_size: int | None = None,
    metric: str = "sqeuclidean",
) -> dict[str, Any]:
    """CMC and mAP of ``query_feats`` against ``gallery_feats`` (Market-1501 protocol).

    Features ``[N, D]`` (numpy or torch, L2-normalised by the caller) are compared by squared
    Euclidean distance ``|q|^2 + |g|^2 - 2 q.g`` or ``"cosine"`` (``1 - q.g``), on the device of
    ``query_feats``, ``chunk_size`` queries at a time (default: ``chunk * gallery * 8`` bytes
    about 256 MB; the reused per-chunk buffers take about twice that). Half-precision features
    are computed in float32, float64 stays float64. pids and camids are integer arrays; a query
    with pid -1 has no match (junk is dropped from the gallery) and is skipped.

    Returns ``{"mAP", "rank1", "rank5", "rank10"}`` as fractions in [0, 1], ``"cmc"`` (a list of
    ``max_rank`` floats; when ``max_rank`` exceeds the gallery size the list is still
    ``max_rank`` long, the ranks past the gallery repeating the last value, 1.0) and
    ``"num_valid_queries"``. Raises :class:`FtclipError` if no query is valid.
    """
    if metric not in METRICS:
        raise FtclipError(f"metric={metric!r} is not supported; use one of {', '.join(METRICS)}.")
    qf = _as_features(query_feats, "query_feats", None)
    gf = _as_features(gallery_feats, "gallery_feats", qf.device)
    if qf.shape[1] != gf.shape[1]:
        raise FtclipError(
            f"query_feats have dimension {qf.shape[1]} but gallery_feats {gf.shape[1]}; "
            "extract both with the same model."
        )
    dtype = torch.promote_types(qf.dtype, gf.dtype)
    qf, gf = qf.to(dtype), gf.to(dtype)
    labels = _as_labels(qf.shape[0], gf.shape[0], query_pids, gallery_pids, query_camids, gallery_camids, qf.device)
    keep = labels[1] != JUNK_PID
    if not bool(keep.all()):
        gf = gf[keep]
    gf_t = gf.T.contiguous()
    g_sq = (gf * gf).sum(1)

    def distances(start: int, stop: int, out: Tensor) -> Tensor:
        q = qf[start:stop]
        if metric == "cosine":
            return torch.addmm(torch.ones(1, 1, dtype=dtype, device=q.device), q, gf_t, alpha=-1, out=out)
        torch.addmm(g_sq[None, :], q, gf_t, alpha=-2, out=out)
        return out.add_((q * q).sum(1, keepdim=True))

    return _evaluate(distances, dtype, *labels, max_rank=max_rank, chunk_size=chunk_size)


def cmc_map_from_distances(
    distmat: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    max_rank: int = 50,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Like :func:`evaluate_reid`, from a precomputed ``[num_query, num_gallery]`` distance matrix.

    Smaller distance = more similar. The matrix stays where it is (numpy or torch, any device);
    rows are processed ``chunk_size`` at a time.
    """
    dist = _as_features(distmat, "distmat", None)
    if dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    labels = _as_labels(
        dist.shape[0], dist.shape[1], query_pids, gallery_pids, query_camids, gallery_camids, dist.device
    )
    keep = labels[1] != JUNK_PID
    cols = None if bool(keep.all()) else keep.nonzero().squeeze(1)

    def distances(start: int, stop: int, out: Tensor) -> Tensor:
        rows = dist[start:stop]
        if cols is None:
            return rows if rows.is_contiguous() else out.copy_(rows)
        return torch.index_select(rows, 1, cols, out=out)

    return _evaluate(distances, dist.dtype, *labels, max_rank=max_rank, chunk_size=chunk_size)


def _evaluate(
    distances: Callable[[int, int, Tensor], Tensor],
    dtype: torch.dtype,
    q_pids: Tensor,
    g_pids: Tensor,
    q_cams: Tensor,
    g_cams: Tensor,
    *,
    max_rank: int,
    chunk_size: int | None,
) -> dict[str, Any]:
    """Run the protocol chunk by chunk over the queries.

    ``distances(a, b, out)`` gives distance rows a..b-1, written into ``out`` [b - a, G] or not.
    """
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise FtclipError(f"max_rank={max_rank!r} must be a positive integer (50 is usual).")
    keep = g_pids != JUNK_PID
    g_pids, g_cams = g_pids[keep], g_cams[keep]
    num_q, num_g = q_pids.numel(), g_pids.numel()
    if num_g == 0:
        raise FtclipError("the gallery is empty once junk images (pid -1) are dropped; check gallery_pids.")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_BYTES // (8 * num_g))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise FtclipError(f"chunk_size={chunk_size!r} must be a positive integer or None (automatic).")

    # Same-pid gallery entries of each query, as a range in the pid-sorted gallery.
    g_pids_sorted, g_order = torch.sort(g_pids, stable=True)
    first = torch.searchsorted(g_pids_sorted, q_pids)
    count = torch.searchsorted(g_pids_sorted, q_pids, right=True) - first

    # Reused [chunk, G] buffers: fresh ones per chunk cost page faults on CPU.
    rows_max = min(chunk_size, num_q)
    device = q_pids.device
    work = _Workspace(
        dist=torch.empty(rows_max, num_g, dtype=dtype, device=device),
        bucket=torch.empty(rows_max, num_g, dtype=torch.int64, device=device),
        scratch=torch.empty(rows_max, num_g, dtype=dtype, device=device),
        tied=torch.empty(rows_max, num_g, dtype=torch.bool, device=device),
    )
    ap_parts, rank_parts = [], []
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        width = int(count[start:stop].max())
        if width == 0:  # no query in this chunk has a same-pid gallery entry
            ap_parts.append(torch.zeros(stop - start, dtype=torch.float64, device=q_pids.device))
            rank_parts.append(torch.zeros(stop - start, dtype=torch.int64, device=q_pids.device))
            continue
        slot = torch.arange(width, device=q_pids.device)
        present = slot < count[start:stop, None]
        g_idx = g_order[(first[start:stop, None] + slot).clamp(max=num_g - 1)]
        hit = present & (g_cams[g_idx] != q_cams[start:stop, None])
        part = work.rows(stop - start)
        ap, first_rank = _rank_matches(distances(start, stop, part.dist), g_idx, present, hit, part)
        ap_parts.append(ap)
        rank_parts.append(first_rank)

    ap_all, first_rank = torch.cat(ap_parts), torch.cat(rank_parts)
    valid = first_rank > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise FtclipError(
            "no query has a gallery image of the same pid from another camera, so CMC/mAP are undefined; "
            "check that query/gallery pids and camids are the right way round."
        )
    ranks_kept = max(max_rank, 10)
    hist = torch.bincount(first_rank[valid].clamp(max=ranks_kept + 1) - 1, minlength=ranks_kept + 1)
    cmc = (hist[:ranks_kept].cumsum(0).double() / num_valid).tolist()
    return {
        "mAP": float(ap_all[valid].mean()),
        "rank1": cmc[0],
        "rank5": cmc[4],
        "rank10": cmc[9],
        "cmc": cmc[:max_rank],
        "num_valid_queries": num_valid,
    }


class _Workspace(NamedTuple):
    """Per-chunk [rows, G] buffers: distances, bucket indices, a float scratch and a tie mask."""

    dist: Tensor
    bucket: Tensor
    scratch: Tensor
    tied: Tensor

    def rows(self, n: int) -> _Workspace:
        return _Workspace(*(t[:n] for t in self))


def _rank_matches(
    dist: Tensor, g_idx: Tensor, present: Tensor, hit: Tensor, work: _Workspace
) -> tuple[Tensor, Tensor]:
    """AP and first-match rank (1-based, 0 = no match) for each row of ``dist`` [c, G].

    ``g_idx`` [c, K] (ascending per row) are the same-pid gallery entries ("specials"), ``present``
    marks real ones (the rest is padding), ``hit`` those from another camera; specials that are
    not hits are excluded from the ranking. ``work`` holds [c, G] buffers to write into.
    """
    rows, width = g_idx.shape
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    spec = torch.where(present, dist.gather(1, g_idx), inf)
    spec, perm = torch.sort(spec, dim=1, stable=True)  # by (distance, gallery index)
    g_idx, present, hit = g_idx.gather(1, perm), present.gather(1, perm), hit.gather(1, perm)

    # bucket[e] = number of specials with a smaller distance than entry e.
    bucket = torch.searchsorted(spec, dist, out=work.bucket)
    spec_pad = torch.cat([spec, inf.expand(rows, 1)], dim=1)
    tied = torch.eq(torch.gather(spec_pad, 1, bucket, out=work.scratch), dist, out=work.tied)  # incl. self
    dup_specials = (present[:, 1:] & (spec[:, 1:] == spec[:, :-1])).any()
    if bool(dup_specials) or int(torch.count_nonzero(tied)) != int(present.sum()):
        _break_ties(bucket, tied, spec, g_idx, present)

    counts = torch.zeros(rows, width + 1, dtype=torch.int64, device=dist.device)
    counts.scatter_add_(1, bucket, torch.ones((), dtype=torch.int64, device=dist.device).expand_as(bucket))
    at_or_before = counts[:, :width].cumsum(1)  # gallery entries ranked up to each special
    rank = at_or_before - (present & ~hit).cumsum(1)  # ... minus the excluded same-camera ones
    hits_so_far = hit.cumsum(1)
    precision = torch.where(hit, hits_so_far.double() / rank.clamp(min=1).double(), 0.0)
    num_hits = hits_so_far[:, -1]
    ap = precision.sum(1) / num_hits.clamp(min=1)
    no_hit = torch.iinfo(torch.int64).max
    first_rank = torch.where(hit, rank, no_hit).min(1).values
    return ap, torch.where(num_hits > 0, first_rank, 0)


def _break_ties(bucket: Tensor, tied: Tensor, spec: Tensor, g_idx: Tensor, present: Tensor) -> None:
    """Fix ``bucket`` in place for entries at exactly a special's distance: lower gallery index first.

    Each special gets a key ``(row, number of specials closer than it, gallery index)`` packed in
    an int64; the keys are sorted globally, so one ``searchsorted`` counts, for every tied entry,
    the specials ranked before it in its row.
    """
    rows, num_g = tied.shape
    width = spec.shape[1]
    closer = torch.searchsorted(spec, spec)  # specials with a strictly smaller distance
    row_base = torch.arange(rows, device=spec.device)[:, None] * (width + 1)
    spec_idx = torch.where(present, g_idx, num_g)
    keys = ((row_base + closer) * (num_g + 1) + spec_idx).flatten()
    r, e = tied.nonzero(as_tuple=True)
    entry_keys = ((r * (width + 1) + bucket[r, e]) * (num_g + 1)) + e
    bucket[r, e] = torch.searchsorted(keys, entry_keys) - r * width


def _as_features(x: ArrayLike, name: str, device: torch.device | None) -> Tensor:
    """A 2-D finite floating tensor (numpy/list/torch accepted), moved to ``device`` if given."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise FtclipError(f"{name} must be a non-empty 2-D array [N, D]; got shape {tuple(t.shape)}.")
    if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if device is not None:
        t = t.to(device)
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):  # cheap test first
        raise FtclipError(f"{name} contains NaN or infinite values; check the model outputs.")
    return t


def _as_labels(
    num_q: int,
    num_g: int,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """pids and camids as int64 tensors on ``device``, with lengths checked against the features."""
    out = []
    for name, value, n in (
        ("query_pids", query_pids, num_q),
        ("gallery_pids", gallery_pids, num_g),
        ("query_camids", query_camids, num_q),
        ("gallery_camids", gallery_camids, num_g),
    ):
        t = torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else torch.as_tensor(value)
        if t.ndim != 1 or t.numel() != n:
            raise FtclipError(f"{name} must be 1-D with {n} entries (one per row); got shape {tuple(t.shape)}.")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise FtclipError(f"{name} must hold integers; got dtype {t.dtype}.")
        out.append(t.to(device=device, dtype=torch.int64))
    return out[0], out[1], out[2], out[3]
