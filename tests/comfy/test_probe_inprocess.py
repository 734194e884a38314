"""Probe mode in-process (CPU, ComfyUI 0.3.75 importable): the mass recall against a brute-force
one-hot readout of the selected key set, dense pass-through, stats/format/heatmap."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module
from tests.comfy.test_patcher_inprocess import FakeHunyuanVideo, _begin, _dense_func

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    REP = load_nodes_module("report")
    PRB = load_nodes_module("probe")
    PR = load_nodes_module("probe")

HAS_MD = "max_density" in CW.config_fields() if _why is None else False


def _cfg(**kw):
    base = dict(q_clusters=4, k_clusters=8, k_clusters_init=8, top_k=2, warmup=0.0, min_tokens=0,
                calibration_dense=False, dense_layer_fraction=0.0, backend="torch")
    if HAS_MD:
        base["max_density"] = 1.0
    base.update(kw)
    return CW.make_config(**base)


def _brute_recall(Q, K, cfg, st, txt_range, rows):
    """Selected key set per query from V = one-hot key ids (N + 1 <= D): the output is non-zero
    exactly on the computed keys; recall = dense softmax mass on them."""
    B, H, N, D = Q.shape
    assert N <= D
    V = torch.eye(N, D).expand(B, H, N, D).contiguous()
    o, _ = P.sparse_attention(Q, K, V, config=cfg, state=st, always_dense_range=txt_range)
    sel = o[..., :N].abs() > 0                                           # [B, H, N, N]
    p = torch.softmax((Q.float() @ K.float().transpose(-1, -2)) * D ** -0.5, -1)
    return (p * sel).sum(-1)[:, :, rows]                                 # [B, H, r]


@pytest.mark.parametrize("txt", [None, "start", "end"])
@pytest.mark.parametrize("top_k", [1, 3, 8])
def test_mass_recall_matches_one_hot_brute_force(txt, top_k):
    torch.manual_seed(1)
    B, H, D, n_vid, n_txt = 1, 2, 128, 96, 8
    N = n_vid + (n_txt if txt else 0)
    Q, K = torch.randn(B, H, N, D) * 1.5, torch.randn(B, H, N, D)
    tr = None if txt is None else ((0, n_txt) if txt == "start" else (n_vid, N))
    cfg = _cfg(top_k=top_k)
    st = P.ClusterState()
    st_copy = copy.deepcopy(st)
    got = PR.mass_recall(Q, K, cfg, copy.deepcopy(st), None, tr, None, max_rows=10_000)
    vid = range(n_vid) if tr is None or tr[0] != 0 else range(n_txt, N)
    ref = _brute_recall(Q, K, cfg, st_copy, tr, list(vid)).mean()
    assert float(got) == pytest.approx(float(ref), abs=2e-4)
    if top_k >= 8:
        assert float(got) == pytest.approx(1.0, abs=1e-5)
    else:
        assert float(got) < 0.999


def test_probe_passes_dense_on_and_records_error_recall():
    torch.manual_seed(0)
    B, H, D, n_txt = 1, 2, 64, 8
    x = torch.zeros(B, 16, 2, 6, 8)          # grid 2x3x4 = 24 video tokens
    L = 24 + n_txt
    probe = PRB.make_probe("on", "1", "*")
    run = P.PatchHolder(_cfg(q_clusters=4, k_clusters=8, top_k=2), None, "auto", probe=probe)
    run.override = P.make_override(run)
    run.begin(None)
    dm = FakeHunyuanVideo(True)
    ctx = torch.zeros(B, n_txt, 32)
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    for sigma in (0.9, 0.5):
        to = {"sigmas": torch.tensor([sigma]), "cond_or_uncond": [0]}
        _begin(run, dm, (x, None, ctx), to)
        for bi in (0, 1):
            to["block_type"], to["block_index"] = "double", bi
            out = run.override(_dense_func, q, k, v, H, skip_reshape=True, transformer_options=to)
            ref = _dense_func(q, k, v, H, skip_reshape=True)
            if bi == 1:   # probed: exactly the dense result
                torch.testing.assert_close(out, ref, atol=0, rtol=0)
            else:         # not probed: the sparse result (top_k=2 of 8: differs)
                assert (out - ref).abs().max() > 1e-4
    assert [(p.layer, p.step) for p in run.run.probes] == [(1, 0), (1, 1)]
    P.end_run(run, None)
    s = run.last_run
    pr = s["probe"]
    assert pr["calls"] == 2 and pr["worst_layers"][0]["layer"] == 1
    w = pr["worst_layers"][0]
    assert 0 < w["error_max"] < 2 and 0 < w["recall_min"] <= w["recall_mean"] < 1
    assert pr["error_grid"][1][0] is not None and pr["error_grid"][0][0] is None
    assert s["per_layer"]["1"]["settings"]["top_k"] == 2
    txt = REP.format_stats(s)
    assert "probe (layers 1, steps *)" in txt and "worst layers first" in txt
    js = REP.stats_json(s)
    assert js["probe"]["worst_layers"][0]["layer"] == 1


def test_probe_off_and_bad_selection():
    assert PRB.make_probe("off") is None
    with pytest.raises(ValueError, match="probe_layers"):
        PRB.make_probe("on", "a-b", "*")


def test_heatmap_cells_axes_and_legend():
    """Each cell has the colour of its density (grey = no call), at a readable size, with room for the
    title, layer/step labels and the colour legend; large grids stay within a screen."""
    RP = load_nodes_module("report_plot")
    d = {"density_grid": [[0.5, 0.2, None], [1.0, 0.3, 0.1]], "mean_density": 0.275, "calls": 12, "sparse_calls": 8}
    pil = RP.heatmap_pil(d)
    left, top, cell, R, C = pil.info["grid_box"]
    assert (R, C) == (2, 3) and cell >= 24
    for li, row in enumerate(d["density_grid"]):
        for si, v in enumerate(row):
            px = pil.getpixel((int(left + (si + 0.2) * cell), int(top + (li + 0.2) * cell)))
            assert px == RP.colour(v), (li, si, v, px)
    assert RP.colour(None) != RP.colour(0.0) and RP.colour(1.0) != RP.colour(0.0)
    assert pil.width > left + C * cell + 60            # legend right of the grid
    assert pil.height > top + R * cell + 30            # step labels and axis title below
    title = pil.crop((0, 0, pil.width, top - 4)).convert("L")
    assert title.getextrema()[1] > 150                 # the title is drawn (light text on dark)
    img = REP.heatmap_image(d)
    assert img.shape == (1, pil.height, pil.width, 3)
    big = RP.heatmap_pil({"density_grid": [[0.5] * 50 for _ in range(40)]})
    assert max(big.size) <= 1024 and big.info["grid_box"][2] >= 8
