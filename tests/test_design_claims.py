"""docs/DESIGN.md's tensor-conventions table (between the `dtype-claims` markers) states what the
code produces: a small sparse call on the CPU (backend torch; the Triton assignment kernel under
TRITON_INTERPRET=1 for the labels it writes) records each tensor's dtype and compares it with the
table. Offline: no ComfyUI."""
from __future__ import annotations

import os
import re

import pytest
import torch

from adacluster_core import AdaClusterConfig, api, clustering

BEGIN, END = "<!-- dtype-claims:begin -->", "<!-- dtype-claims:end -->"


def design_dtype_claims(repo_root) -> dict[str, torch.dtype]:
    """`tensor name -> torch dtype` from the marked table of docs/DESIGN.md."""
    text = (repo_root / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/DESIGN.md lost its dtype-claims markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    claims = {}
    for ln in block.splitlines():
        m = re.match(r"\s*\| `([\w\[\]]+)` \| (\w+) \|", ln)
        if m:
            claims[m.group(1)] = getattr(torch, m.group(2))
    return claims


def _qkv(G_heads=2, N=96, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, G_heads, N, D, generator=g) for _ in range(3))


def _spy_call(monkeypatch, **call_kw) -> dict:
    """Run one sparse call (backend torch) and return the tensors handed to build_layout and
    the Layout it returned."""
    seen = {}
    real = api.build_layout

    def spy(q, k, v, rq, rk, sel, **kw):
        lay = real(q, k, v, rq, rk, sel, **kw)
        seen.update(rq=rq, rk=rk, sel=sel, layout=lay)
        return lay

    monkeypatch.setattr(api, "build_layout", spy)
    q, k, v = _qkv()
    cfg = AdaClusterConfig(min_tokens=0, q_clusters=6, k_clusters=10, top_k=4, kmeans_iters_first=2,
                           kmeans_iters_reuse=1, backend="torch", max_density=1.0, pooled_tail=True)
    _, st = api.sparse_attention(q, k, v, cfg, **call_kw)
    assert not st["dense"], st["reason"]
    return seen


def test_design_table_parses(repo_root):
    claims = design_dtype_claims(repo_root)
    assert {"labels[torch]", "perm", "offsets", "sel", "range_start", "perm_q", "k_index"} <= set(claims), claims


def test_design_dtype_claims_match_the_code(repo_root, monkeypatch):
    claims = design_dtype_claims(repo_root)
    seen = _spy_call(monkeypatch, always_dense_range=(0, 8), kv_rows="indexed")
    rq, rk, lay = seen["rq"], seen["rk"], seen["layout"]
    got = {
        "labels[torch]": rq.labels.dtype,
        "centroids": rq.centroids.dtype,
        "counts": rk.counts.dtype,
        "perm": rk.perm.dtype,
        "offsets": rk.offsets.dtype,
        "sel": seen["sel"].dtype,
        "range_start": lay.range_start.dtype,
        "range_end": lay.range_end.dtype,
        "perm_q": lay.perm_q.dtype,
        "q_offsets": lay.q_offsets.dtype,
        "k_index": lay.k_index.dtype,
        "tail_bias": lay.tail_bias.dtype,
    }
    # the sort on its own (no always-dense rows) gives the same perm / offsets dtypes
    labels = torch.randint(0, 5, (2, 40), dtype=torch.int32)
    perm, offs = clustering.sort_by_cluster(labels, 5)
    assert (perm.dtype, offs.dtype) == (got["perm"], got["offsets"])
    # without always-dense rows the key permutation goes to the kernel as it is
    seen2 = _spy_call(monkeypatch, kv_rows="indexed")
    assert seen2["layout"].k_index.dtype == got["k_index"]
    assert seen2["layout"].perm_q.dtype == got["perm_q"]
    wrong = {name: (str(claims.get(name)), str(dt)) for name, dt in got.items() if claims.get(name) != dt}
    assert not wrong, f"docs/DESIGN.md (claimed, actual): {wrong}"


def _triton_cpu_ok() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()


@pytest.mark.skipif(not _triton_cpu_ok(), reason="Triton needs CUDA or TRITON_INTERPRET=1")
def test_design_label_dtype_of_the_triton_kernel(repo_root):
    claims = design_dtype_claims(repo_root)
    dev = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 64, 64, device=dev)
    init = x[:, :6].float().clone()
    r = clustering.kmeans(x, init, 1, backend="triton")
    assert r.labels.dtype == claims["labels[triton]"], (r.labels.dtype, claims["labels[triton]"])
    # beyond int16's range the sort key (and so the kernel's labels) widens to int32, as the table says
    assert clustering.label_dtype(40000) == torch.int32
