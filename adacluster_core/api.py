"""The public entry point: `sparse_attention(q, k, v, config, state, ...)`.

One sparse call (docs/ALGORITHM.md, "One sparse call"):
  k-means on L2-normalised Q and on raw K (warm start from the state), permutation by cluster,
  per key cluster Kmax / Kmin, selection of key clusters per query cluster, row ranges, then the
  variable-block attention kernel over the permuted layout.

Always-dense tokens (`always_dense_range`, e.g. the text tokens of HunyuanVideo) are not
clustered: their keys are stored after the clustered keys in the permuted buffer and form one
extra range every query cluster attends to; their queries form one extra query cluster whose
ranges cover every (unmasked) key, i.e. they run dense inside the same kernel call.

Masked keys (`key_mask`) never get weight: masked clustered keys get the label "ignored"
(sorted after all clusters, outside every range, out of the centroids and bounds); masked
always-dense keys are moved behind the valid ones and left out of the extra range.

No host synchronisation on the reuse path (state warm, layer count known): all shapes depend
only on N, Cq, Ck, top_k and the always-dense range. `stats["density"]` is therefore a 0-dim
tensor; `float()` it to read it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import clustering
from .config import AdaClusterConfig
from .guards import (CHECK_ALL_MASKED, CHECK_NON_FINITE, CHECK_OK, FiniteCheck, StopRequested, check_args,
                     guard_interrupt, normalise_range, triton_usable)
from .layout import build_layout, run_layout, split_rows
from .selection import select_clusters
from .state import ClusterState

SPARSE_HEAD_DIMS = (64, 128)
SPARSE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MASK_THRESHOLD = -1e4  # additive mask values <= this count as "masked"


def resolve_backend(backend: str, device: torch.device) -> str:
    """"torch" -> the torch reference (tests, debugging); "auto" / "triton" -> "triton" where
    Triton runs (CUDA, or TRITON_INTERPRET=1), else "dense" (the call runs dense attention,
    reason "dense: no triton": the reference is far slower than dense attention)."""
    if backend == "torch":
        return "torch"
    return "triton" if triton_usable(device) else "dense"


NO_TRITON = "dense: no triton"
NON_FINITE = "non-finite input"
OVERFLOW = "overflow (float32 range)"
ALL_MASKED = "every key masked"
# reasons whose call must give exactly dense attention's result (the patcher reruns such a call
# through ComfyUI's own attention)
DENSE_RESULT_REASONS = (NON_FINITE, OVERFLOW, ALL_MASKED)


def _key_mask(key_mask, B: int, H: int, N: int):
    """-> (masked bool [B, 1|H, N] or None, sdpa_mask or None, query_dependent: bool)."""
    if key_mask is None:
        return None, None, False
    m = key_mask
    if m.dim() == 1:
        m = m.view(1, 1, 1, -1)
    elif m.dim() == 2:
        m = m[:, None, None, :]
    elif m.dim() == 3:  # ComfyUI convention: [B, 1|L, N] -> [B, 1, 1|L, N]
        m = m.unsqueeze(1)
    if m.dim() != 4:
        return None, key_mask, True
    if m.dtype == torch.bool:
        sdpa = m
        masked = ~m
    else:
        sdpa = m
        masked = m <= MASK_THRESHOLD
    if m.shape[-1] != N or m.shape[2] != 1 or m.shape[1] not in (1, H) or m.shape[0] not in (1, B):
        return None, sdpa, True
    masked = masked[:, :, 0, :].expand(B, m.shape[1], N)
    return masked, sdpa, False


def _dense(q, k, v, scale, sdpa_mask):
    """torch SDPA with the mask as given (in q's dtype): what ComfyUI's own attention computes, so
    a row whose every key is masked gives what SDPA gives for that mask (0 for bool / -inf masks)."""
    if sdpa_mask is not None and sdpa_mask.dtype != torch.bool and sdpa_mask.dtype != q.dtype:
        sdpa_mask = sdpa_mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, scale=scale)


def _stats(cfg: AdaClusterConfig, device, **kw) -> dict:
    st = dict(q_clusters=0, k_clusters=0, dense=True, reason="", selection=cfg.selection, top_k=0,
              stage="dense", backend="dense", attention="sdpa", n_clustered=0)
    st.update(kw)
    if "density" not in st:  # dense calls: 1 (a fill op the sparse call does not need)
        st["density"] = torch.ones((), device=device)
    return {"density": st.pop("density"), **st}


def _dense_reason(q: torch.Tensor, k: torch.Tensor, cfg: AdaClusterConfig, state: Optional[ClusterState],
                  qdep: bool) -> str:
    """Why a well-formed call runs dense before any sparse work ("" when it may go sparse): the
    first of empty input, cross-attention, dtype, head_dim, min_tokens, a query-dependent mask, a
    layer marked dense, no Triton."""
    B, H, N, D = q.shape
    reason = ""   # assigned, not returned: tests/harness/dense_reasons.py reads `reason = ...` as Stats reasons
    if B == 0 or H == 0 or N == 0:
        reason = "empty input (B, H or N is 0)"
    elif k.shape[2] != N:
        reason = f"cross-attention ({k.shape[2]} keys for {N} queries)"
    elif q.dtype not in SPARSE_DTYPES:
        reason = f"dtype {q.dtype} unsupported"
    elif D not in SPARSE_HEAD_DIMS:
        reason = f"head_dim {D} unsupported (sparse needs {SPARSE_HEAD_DIMS})"
    elif N < cfg.min_tokens:
        reason = f"N={N} < min_tokens={cfg.min_tokens}"
    elif qdep:
        reason = "key_mask is query-dependent or has an unsupported shape"
    elif state is not None and state.dense:
        reason = state.dense_reason or "layer marked dense"
    elif resolve_backend(cfg.backend, q.device) == "dense":
        reason = NO_TRITON
    return reason


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     config: Optional[AdaClusterConfig] = None, state: Optional[ClusterState] = None,
                     *, scale: Optional[float] = None, always_dense_range=None,
                     always_dense_prefix: Optional[int] = None, key_mask: Optional[torch.Tensor] = None,
                     interrupt_check: Optional[Callable[[], None]] = None, check_finite: bool = True,
                     out: Optional[torch.Tensor] = None, kv_rows: Optional[str] = None):
    """AdaCluster sparse self-attention.

    q, k, v: [B, H, N, D] (fp16 / bf16 / fp32, any device). Returns (out, stats); out has q's
    shape and dtype. `scale` defaults to D**-0.5.
    always_dense_range=(start, stop): tokens every query attends to and whose queries attend
        to every key (text tokens); negative indices count from the end. always_dense_prefix=P
        is shorthand for (0, P).
    key_mask: additive mask broadcastable to [B, 1|H, 1, N] ([B, N] and ComfyUI's [B, 1, N]
        accepted; bool masks use SDPA's True = attend). Values <= -1e4 mean "masked"; other
        values are treated as 0 on the sparse path (soft biases are honoured only when the
        call runs dense). A query-dependent mask makes the call dense.
    state: the layer's ClusterState (updated in place), or None for a stateless call.
    interrupt_check: called between k-means iterations and multi-stage rounds; whatever it
        raises (ComfyUI: `comfy.model_management.throw_exception_if_processing_interrupted`)
        propagates unchanged, so a long call can be stopped.
    check_finite: a call whose q, k or v (or float key_mask) holds NaN / Inf runs dense (reason
        "non-finite input"), so the output is what dense attention gives; so does a call whose
        float32 scores / sums could overflow or whose sparse output is not finite (reason
        "overflow (float32 range)") and one where some row has every key masked (reason "every key
        masked": dense gives SDPA's own answer for it). The checks never stall the GPU (guards.py).
    B, H or N = 0: dense (reason "empty input (B, H or N is 0)"), i.e. SDPA's empty result.
    stats: density (0-dim tensor: computed query-key pairs / (B·H·N²), dense rows included),
        q_clusters, k_clusters, dense, reason ("" when sparse), selection, top_k, stage
        ("first" | "reuse" | "calibration" | "dense"), backend ("triton" | "torch" | "dense"),
        attention (the kernel that ran: "triton" | "reference" | "sdpa"), n_clustered.
    kv_rows: how the kernel gets K / V in cluster order: "copied" (permuted copies, 2 x q's bytes
        more, the faster kernel) or "indexed" (gathered in the kernel, no copies); None = layout.KV_ROWS.
    out: optional buffer of q's shape and dtype (any strides, e.g. a [B, H, N, D] view of the
        [B, N, H·D] tensor the model wants back): the result is written into it (the kernel writes
        through its strides; dense calls copy into it) and it is returned. Without it the sparse
        result has q's memory order (a [B, N, H·D] reshape of it is then a view). q, k, v are read
        where they lie (any strides with unit stride along D): no copies of them
        (docs/KERNEL_NOTES.md, "Memory").
    backend "auto" (and "triton") run dense where Triton cannot run (reason "dense: no triton");
        only backend="torch" runs the slow torch reference.
    Odd inputs, one rule (guards.check_args): a malformed argument raises ValueError naming it;
    a well-formed call the sparse path does not cover runs dense with a reason. Internal errors
    of the sparse path run dense with a reason too (ADACLUSTER_STRICT=1 re-raises them).
    """
    cfg = config if config is not None else AdaClusterConfig()
    if not isinstance(cfg, AdaClusterConfig):
        raise ValueError(f"config must be an AdaClusterConfig, got {type(cfg).__name__}")
    check_args(q, k, v, scale, key_mask, always_dense_range, always_dense_prefix)
    B, H, N, D = q.shape
    sc = float(scale) if scale is not None else D ** -0.5
    masked, sdpa_mask, qdep = _key_mask(key_mask, B, H, k.shape[2] if k.dim() == 4 else N)

    if out is not None and (tuple(out.shape) != tuple(q.shape) or out.dtype != q.dtype or out.device != q.device):
        raise ValueError(f"out must match q ({tuple(q.shape)}, {q.dtype}, {q.device}), got "
                         f"{tuple(out.shape)}, {out.dtype}, {out.device}")

    def dense(reason: str, **kw):
        res = _dense(q, k, v, sc, sdpa_mask)
        if out is not None:
            res = out.copy_(res)
        return res, _stats(cfg, q.device, reason=reason, **kw)

    early_reason = _dense_reason(q, k, cfg, state, qdep)
    if early_reason:
        return dense(early_reason)
    r0, r1 = normalise_range(N, always_dense_range, always_dense_prefix)
    Nt = r1 - r0
    Nv = N - Nt
    if Nv <= 0:
        return dense("no tokens to cluster (all in always_dense_range)")
    return _guarded_sparse(q, k, v, cfg, state, sc, r0, r1, masked, dense, interrupt_check, check_finite,
                           key_mask, out, kv_rows)


def _guarded_sparse(q, k, v, cfg, state, sc, r0, r1, masked, dense, interrupt_check, check_finite, key_mask=None,
                    out=None, kv_rows=None):
    """_sparse with the input / output checks (guards.FiniteCheck, read after the sparse work is
    queued; on NaN / Inf inputs or mask, an overflow risk or a non-finite output, or a row whose
    every key is masked, the state is restored and the call runs dense: exactly dense's result),
    the interrupt pass-through and the dense fallback on internal errors."""
    fin = FiniteCheck(q, k, v, key_mask=key_mask, masked=masked, scale=sc) if check_finite else None
    saved = dataclasses.replace(state) if state is not None else None
    try:
        res = _sparse(q, k, v, cfg, state, sc, r0, r1, masked, dense, guard_interrupt(interrupt_check), out, kv_rows)
        err = None
    except StopRequested as e:
        raise e.original from None
    except Exception as e:  # never break a generation: run dense and say why
        res, err = None, e
    if fin is not None and res is not None:
        fin.check_output(res[0])
    code = fin.code() if fin is not None else CHECK_OK
    if code != CHECK_OK:
        if state is not None:   # nothing learnt from NaN / Inf / overflowing inputs
            state.__dict__.update(saved.__dict__)
        reason = "non-finite input" if code == CHECK_NON_FINITE else (
            "every key masked" if code == CHECK_ALL_MASKED else "overflow (float32 range)")
        return dense(reason)
    if err is not None:
        if os.environ.get("ADACLUSTER_STRICT") == "1":
            raise err
        return dense(f"sparse path failed: {type(err).__name__}: {err}")
    return res


def _key_count(k_clu, cfg: AdaClusterConfig, state: Optional[ClusterState], ignore, backend: str, check=None):
    """The layer's key-cluster count: fixed, known from the state, or found now by the
    multi-stage procedure. -> (Ck, initial centroids or None, dense reason or "")."""
    if cfg.k_clusters is not None:
        return cfg.k_clusters, None, ""
    if state is not None and state.k_clusters:
        return int(state.k_clusters), None, ""
    ms = clustering.multi_stage_key_clustering(
        k_clu, init_clusters=cfg.k_clusters_init, tau_scale=cfg.tau_scale, max_stages=cfg.max_stages,
        stage_iters=cfg.stage_iters, n_max=(state.k_cap if state is not None else None),
        ignore=ignore, backend=backend, check=check)
    if ms.dense:
        if state is not None:
            state.dense, state.dense_reason = True, ms.reason
        return ms.k_clusters, None, ms.reason
    if state is not None:
        state.k_clusters = ms.k_clusters
        state.k_centroids = ms.centroids.reshape(k_clu.shape[0], k_clu.shape[1], ms.k_clusters, k_clu.shape[3])
        state.calls = 0
    return ms.k_clusters, ms.centroids, ""


def _cluster(q_clu, k_clu, Cq: int, Ck: int, k_init, cfg: AdaClusterConfig, state: Optional[ClusterState],
             ignore, backend: str, check=None):
    """k-means of the normalised queries and the raw keys, warm-started from the state.
    -> (rq, rk, stage) with rk carrying the TensorQuest bounds when the selection needs them."""
    B, H, _, D = q_clu.shape
    G = B * H
    dev = q_clu.device
    warm_calls = state is not None and state.calls > 0
    cq0 = ClusterState._match(state.q_centroids, (B, H, Cq, D), dev) if state is not None else None
    ck0 = ClusterState._match(state.k_centroids, (B, H, Ck, D), dev) if state is not None else None
    if ck0 is None and k_init is not None and k_init.shape[1] == Ck:
        ck0 = k_init
    warm_q = cq0 is not None and warm_calls
    warm_k = ck0 is not None and warm_calls
    # the multi-stage procedure's centroids are already fitted stage by stage: a few Lloyd
    # iterations finish them (not a cold start)
    calibrated_k = ck0 is not None and not warm_calls
    if cq0 is None:
        cq0 = clustering.init_centroids(q_clu, Cq, normalize=True)
    if ck0 is None:
        ck0 = clustering.init_centroids(k_clu, Ck)
    iq = cfg.kmeans_iters_reuse if warm_q else cfg.kmeans_iters_first
    ik = cfg.kmeans_iters_reuse if warm_k else cfg.kmeans_iters_first
    if calibrated_k:
        ik = min(cfg.kmeans_iters_first, cfg.kmeans_iters_reuse + 1)
    rq = clustering.kmeans(q_clu, cq0.reshape(G, Cq, D), iq, normalize=True, backend=backend, check=check)
    # the TensorQuest bounds come out of the last k-means update (same pass over the keys)
    rk = clustering.kmeans(k_clu, ck0.reshape(G, Ck, D), ik, ignore=ignore, backend=backend,
                           with_bounds=cfg.selection == "tensorquest", check=check)
    return rq, rk, ("reuse" if warm_q and warm_k else "first")


def _select(q_clu, rq, rk, cfg: AdaClusterConfig, scale: float, n_keys: Optional[int] = None) -> torch.Tensor:
    """Selected key clusters per query cluster: int64 [G, Cq, S], -1 = none. n_keys: the
    clustered key count when no key is masked (the density budget then needs no reduction)."""
    q_norm = None
    if cfg.selection == "top_p":
        G, Cq = rq.centroids.shape[0], rq.centroids.shape[1]
        nrm = q_clu.float().norm(dim=-1).reshape(G, -1)
        q_norm = torch.zeros(G, Cq + 1, device=q_clu.device).scatter_add_(1, rq.labels.long(), nrm)[:, :Cq]
        q_norm = q_norm / rq.counts.clamp_min(1).float()
    return select_clusters(cfg.selection, cq=rq.centroids, ck=rk.centroids, kmax=rk.kmax, kmin=rk.kmin,
                           k_counts=rk.counts, top_k=cfg.top_k, top_p=cfg.top_p, scale=scale, q_norm=q_norm,
                           max_density=cfg.max_density, n_keys=n_keys, index_dtype=torch.int64)


def _co_selection_order(rk, sel: torch.Tensor) -> torch.Tensor:
    """The key centroids renumbered by the first query cluster that selected them (unselected
    clusters last). Warm-started from them, the next call numbers its key clusters so that the
    clusters a query cluster selects sit next to each other in the permuted buffer and merge
    into longer ranges: fewer ragged chunks and pipeline restarts in the kernel. Changes no
    result beyond float summation order."""
    G, Ck, D = rk.centroids.shape
    Cq, S = sel.shape[1], sel.shape[2]
    slot = (sel.long() % (Ck + 1)).view(G, Cq * S)  # -1 (none) -> a spare column Ck
    first = torch.full((G, Ck + 1), Cq, dtype=torch.long, device=sel.device)
    first.scatter_reduce_(1, slot, _slot_owner(Cq, S, sel.device).expand(G, Cq * S), "amin")
    order = torch.argsort(first[:, :Ck], dim=1, stable=True)
    return torch.gather(rk.centroids, 1, order.unsqueeze(-1).expand(G, Ck, D))


_SLOT_OWNERS: dict = {}


def _slot_owner(Cq: int, S: int, device) -> torch.Tensor:
    """[1, Cq * S]: the query cluster of every selection slot (cached per shape and device:
    the reuse call would otherwise build it every step)."""
    key = (Cq, S, device)
    t = _SLOT_OWNERS.get(key)
    if t is None:
        if len(_SLOT_OWNERS) > 64:
            _SLOT_OWNERS.clear()
        t = torch.arange(Cq, device=device).repeat_interleave(S).view(1, Cq * S)
        _SLOT_OWNERS[key] = t
    return t


def _sparse(q, k, v, cfg: AdaClusterConfig, state: Optional[ClusterState], sc: float,
            r0: int, r1: int, masked, dense, check=None, out=None, kv_rows=None):
    """validate (done by the caller) -> cluster -> select -> build_layout -> run_layout."""
    B, H, N, D = q.shape
    G = B * H
    dev = q.device
    backend = resolve_backend(cfg.backend, dev)
    Nt = r1 - r0
    Nv = N - Nt
    # the clustered part of q / k (every token outside the always-dense range)
    q_clu, _ = split_rows(q, r0, r1)
    k_clu, _ = split_rows(k, r0, r1)
    ignore = masked_t = None
    if masked is not None:
        mg = masked.expand(B, H, N).reshape(G, N)
        ignore_clu, masked_t = split_rows(mg.view(G, 1, N, 1), r0, r1)
        ignore = ignore_clu.reshape(G, Nv)
        masked_t = masked_t.reshape(G, Nt)

    Ck, k_init, reason = _key_count(k_clu, cfg, state, ignore, backend, check)
    if reason:
        return dense(reason, k_clusters=Ck, stage="calibration", backend=backend)
    if k_init is not None and state is not None and cfg.calibration_dense:
        return dense("calibration step (multi-stage key clustering ran; output dense)",
                     k_clusters=Ck, stage="calibration", backend=backend)
    Cq = min(cfg.q_clusters, Nv)
    Ck = min(Ck, Nv)
    rq, rk, stage = _cluster(q_clu, k_clu, Cq, Ck, k_init, cfg, state, ignore, backend, check)
    sel = _select(q_clu, rq, rk, cfg, sc, n_keys=(Nv if ignore is None else None))
    layout = build_layout(q, k, v, rq, rk, sel, scale=sc, dense_range=(r0, r1), masked_dense=masked_t,
                          pooled=cfg.pooled_tail, backend=backend, kv_rows=kv_rows)
    out, attn_name = run_layout(layout, backend, out=out)  # [B, H, N, D], q's dtype

    density = layout.pairs().div(float(G * N * N))  # int64 / float: float32 (the default dtype)
    if state is not None:
        state.q_centroids = rq.centroids.detach().reshape(B, H, Cq, D)
        state.k_centroids = _co_selection_order(rk, sel).detach().reshape(B, H, Ck, D)
        if cfg.k_clusters is None and not state.k_clusters:
            state.k_clusters = Ck
        state.calls += 1
    stats = _stats(cfg, dev, density=density, q_clusters=Cq, k_clusters=Ck, dense=False, reason="",
                   top_k=(sel.shape[-1] if cfg.selection != "top_p" else 0), stage=stage,
                   backend=backend, attention=attn_name, n_clustered=Nv, pooled_tail=cfg.pooled_tail)
    if cfg.selection == "top_p":
        stats["top_p"] = cfg.top_p
    return out, stats
