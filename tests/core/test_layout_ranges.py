"""Row ranges of the selected key clusters (layout.selected_key_ranges) against a plain-Python
reference, on edge cases: unused slots, runs of consecutive ids, every slot its own run, S = 1."""
import pytest
import torch

from adacluster_core.layout import selected_key_ranges


def _ranges_py(sel, offs, extra=None):
    """Merged ranges of one call, by loops: ascending ids, consecutive ids merged, then (0, 0)."""
    G, Cq, S = sel.shape
    rs = torch.zeros(G, Cq, S + (extra is not None), dtype=torch.int32)
    re = torch.zeros_like(rs)
    for g in range(G):
        for c in range(Cq):
            ids = sorted(int(i) for i in sel[g, c] if i >= 0)
            runs = []
            for i in ids:
                if runs and runs[-1][1] == i - 1:
                    runs[-1][1] = i
                else:
                    runs.append([i, i])
            for r, (a, b) in enumerate(runs):
                rs[g, c, r], re[g, c, r] = int(offs[g, a]), int(offs[g, b + 1])
            if extra is not None:
                rs[g, c, S], re[g, c, S] = extra
    return rs, re


def _offsets(G, Ck, gen):
    sizes = torch.randint(0, 5, (G, Ck), generator=gen)
    return torch.cat([torch.zeros(G, 1, dtype=torch.int64), sizes.cumsum(1)], 1).to(torch.int32)


@pytest.mark.parametrize("S,Ck", [(1, 5), (4, 4), (6, 9), (16, 40)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_selected_key_ranges_match_loops(S, Ck, dtype):
    gen = torch.Generator().manual_seed(S * 100 + Ck)
    G, Cq = 3, 7
    offs = _offsets(G, Ck, gen)
    sel = torch.stack([torch.stack([torch.randperm(Ck, generator=gen)[:S] for _ in range(Cq)]) for _ in range(G)])
    drop = torch.rand(G, Cq, S, generator=gen) < 0.3
    sel = torch.where(drop, -1, sel)
    sel[0, 0] = torch.arange(S) % Ck if S <= Ck else sel[0, 0]  # one long run (or every id)
    sel[0, 1] = -1                                              # nothing selected
    if S > 1:
        sel[1, 0] = torch.arange(S) * 2 % Ck                    # many runs of one
    sel = sel.to(dtype)
    for extra in (None, (100, 107)):
        rs, re = selected_key_ranges(sel, offs, extra)
        rs_r, re_r = _ranges_py(sel, offs, extra)
        assert rs.dtype == torch.int32 and re.dtype == torch.int32
        assert torch.equal(rs, rs_r) and torch.equal(re, re_r)
