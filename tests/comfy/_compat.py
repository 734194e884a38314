"""Shared checks of the compatibility matrix (test_compat_matrix.py, test_compat_servers.py).

Each case is a model "stack" (loader + nodes before / after AdaCluster) sampled three times on the
tiny Wan (CPU):
  ref     the stack without AdaCluster
  allk    the stack with AdaCluster selecting every key cluster (top_k 4096): must equal `ref`
          within float rounding (dense attention in another token order)
  sparse  the stack with AdaCluster at a sparse setting: samples, Stats shows sparse calls and
          density < 1
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

from tests.comfy._helpers import TINY, stats_of, text_of
from tests.harness import prompts
from tests.harness.make_tiny_dits import FILENAMES

SPARSE = dict(TINY)
ALL_CLUSTERS = dict(TINY, top_k=4096)
# |allk - ref| <= ATOL * max(1, |ref|max): on latents of magnitude ~10 the observed differences are
# 0.5-1.9e-6 (fp32 sums in another order), the bound ~2e-5; a wrong token order, a dropped LoRA or
# a stale weight is orders of magnitude more.
ATOL = 2e-6
RESULTS_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "compat"


def record(tag: str, **values) -> None:
    """Measured numbers of a case -> artifacts/compat/<tag>.json (for the README table)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{tag}.json").write_text(json.dumps(values, indent=1, default=float))

Spec = tuple  # (class_type, inputs)


def stack_prompt(save_name: str, *, before: Sequence[Spec] = (), after: Sequence[Spec] = (),
                 ada: Optional[dict] = None, loader: Optional[dict] = None, steps: int = 3, cfg: float = 2.0,
                 model_name: str = FILENAMES["wan21"], **kw) -> dict:
    """Harness Wan prompt: loader -> before... -> [AdaCluster(config=ada)] -> after... -> KSampler,
    plus AdaCluster Stats (node "q1") when `ada` is given. `loader` replaces node "1" (the
    UNETLoader) by {"class_type", "inputs"}."""
    chain = list(before)
    ada_index = None
    if ada is not None:
        ada_index = len(chain)
        chain.append(("AdaClusterSparseAttention", {"preset": "auto", "enabled": True, "config": ["cfg", 0]}))
    chain += list(after)
    post = [("AdaClusterStats", {"model": [f"p{ada_index + 1}", 0]})] if ada is not None else []
    p = prompts.video_prompt(model_name, "wan21", chain, steps=steps, cfg=cfg, save_name=save_name,
                             post_nodes=post, **kw)
    if ada is not None:
        p["cfg"] = {"class_type": "AdaClusterThresholds", "inputs": dict(ada)}
    if loader is not None:
        p["1"] = dict(loader)
    return p


def latent(out_dir, name) -> torch.Tensor:
    return torch.load(out_dir / f"{name}.pt")


def max_err(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |a - ref|, the allowed bound)."""
    return (a - ref).abs().max().item(), ATOL * max(1.0, ref.abs().max().item())


def run_matrix_case(srv, out_dir, tag: str, *, before=(), after=(), loader=None, steps: int = 3,
                    cfg: float = 2.0, timeout: float = 600, ref_differs_from: Optional[str] = None) -> dict:
    """Run ref / allk / sparse for one stack and check them. Returns {"ref", "allk", "sparse" (stats),
    "err", "bound", "text"} for callers that check more."""
    kw = dict(before=before, after=after, loader=loader, steps=steps, cfg=cfg)
    srv.run_prompt(stack_prompt(f"{tag}_ref", **kw), timeout=timeout)
    e_all = srv.run_prompt(stack_prompt(f"{tag}_allk", ada=ALL_CLUSTERS, **kw), timeout=timeout)
    e_sp = srv.run_prompt(stack_prompt(f"{tag}_sparse", ada=SPARSE, **kw), timeout=timeout)
    ref, allk, sp = (latent(out_dir, f"{tag}_{k}") for k in ("ref", "allk", "sparse"))
    s_all, s_sp = stats_of(e_all), stats_of(e_sp)
    assert torch.isfinite(sp).all() and torch.isfinite(ref).all(), f"{tag}: non-finite latent"
    assert s_sp["sparse_calls"] > 0 and s_sp["mean_density"] < 1.0, f"{tag}: did not go sparse\n{text_of(e_sp)}"
    assert s_all["sparse_calls"] > 0, f"{tag}: the all-clusters run did not go sparse\n{text_of(e_all)}"
    assert abs(s_all["min_density"] - 1.0) < 1e-4, text_of(e_all)
    err, bound = max_err(allk, ref)
    assert err <= bound, f"{tag}: every cluster selected differs from the stack without AdaCluster: {err} > {bound}"
    if ref_differs_from is not None:  # the stacked node really changed the result
        other = latent(out_dir, ref_differs_from)
        changed = (ref - other).abs().max().item()
        assert changed > 10 * bound, f"{tag}: the stack did not change the output ({changed} vs bound {bound})"
    record(tag, max_abs_diff_all_clusters=err, bound=bound, sparse_calls=s_sp["sparse_calls"],
           calls=s_sp["calls"], mean_density=s_sp["mean_density"], dense_reasons=s_sp["dense_reasons"])
    return {"ref": ref, "allk_stats": s_all, "sparse_stats": s_sp, "err": err, "bound": bound,
            "text": text_of(e_sp)}


def plain_reference(srv, out_dir, name: str = "compat_plain", steps: int = 3, cfg: float = 2.0, loader=None):
    """The bare tiny Wan (no stacked node, no AdaCluster), to show a stacked node changes the output."""
    srv.run_prompt(stack_prompt(name, steps=steps, cfg=cfg, loader=loader))
    return name


_SKIPPED = re.compile(r"(EasyCache|LazyCache) - skipped (\d+)/(\d+) steps")


def cache_skips(log_text: str, since: int = 0) -> list[tuple[str, int, int]]:
    """(name, skipped, total) for each step-cache summary line logged after offset `since`."""
    return [(m.group(1), int(m.group(2)), int(m.group(3))) for m in _SKIPPED.finditer(log_text[since:])]
