"""Patched clones sampled in threads (upstream ComfyUI's MultiGPU CFG split runs one clone per
device in worker threads, all reading the same transformer_options): nothing mutable may be
shared between threads or devices. In-process, CPU, with a real ComfyUI ModelPatcher (so clone()
behaves as the ComfyUI under test does: 0.3.75 deep-copies model_options, upstream shares the
holder) and a real tiny WanModel; the sampling loop is the sampler's pre_run -> forwards per
sigma -> cleanup, with the model's own callbacks, wrapper and override."""
from __future__ import annotations

import threading
from collections import defaultdict

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module, tiny_wan_model

_why = comfy_inprocess()
pytestmark = [pytest.mark.skipif(_why is not None, reason=str(_why)), pytest.mark.per_version]
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    import comfy.patcher_extension as pe

SIGMAS = (1.0, 0.8, 0.6, 0.4, 0.2)


class _MS:  # model_sampling stand-in: flow, sigma = 1 - percent
    @staticmethod
    def percent_to_sigma(p):
        return 1.0 - p


def _tiny_wan(seed=0):
    dm = tiny_wan_model(2, seed)
    return dm


def _patched_clones(n=2):
    """A real ModelPatcher patched by AdaCluster (sparse, few clusters: results depend on the
    cluster states), and `n` clones of it, as MultiGPU's per-device clones are made."""
    import comfy.model_patcher

    inner = torch.nn.Module()
    inner.model_sampling = _MS()
    mp = comfy.model_patcher.ModelPatcher(inner, torch.device("cpu"), torch.device("cpu"))
    cfg = CW.make_config(q_clusters=6, k_clusters=None, k_clusters_init=12, top_k=3, selection="centroid",
                        warmup=0.3, min_tokens=0, dense_layer_fraction=0.0, calibration_dense=True,
                        backend="torch")
    patched = P.patch_model(mp, cfg, None, True, "auto")
    return patched, [patched.clone() for _ in range(n)]


def _sample(clone, dm, x, ctx, gate=None):
    """What the sampler does with one clone: pre_run callbacks, one forward per sigma (batched
    cond+uncond) through the clone's DIFFUSION_MODEL wrapper and attention override, cleanup."""
    for cb in clone.get_all_callbacks(pe.CallbacksMP.ON_PRE_RUN):
        cb(clone)
    to0 = clone.model_options["transformer_options"]
    wrappers = {pe.WrappersMP.DIFFUSION_MODEL: {P.WRAPPER_KEY: clone.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL,
                                                                                   P.WRAPPER_KEY)}}
    outs = []
    try:
        for sig in SIGMAS:
            to = {"sigmas": torch.tensor([sig, sig]), "cond_or_uncond": [0, 1], "wrappers": wrappers,
                  "optimized_attention_override": to0["optimized_attention_override"], "adacluster": to0["adacluster"]}
            if gate is not None:
                gate()
            with torch.no_grad():
                outs.append(dm(x, torch.tensor([sig * 1000] * 2), ctx, transformer_options=to))
    finally:
        for cb in clone.get_all_callbacks(pe.CallbacksMP.ON_CLEANUP):
            cb(clone)
    return torch.stack(outs)


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 16, 3, 8, 8, generator=g), torch.randn(2, 16, 64, generator=g)


def _spy_states(monkeypatch):
    """Wrap the core's sparse_attention as the patcher calls it: which (thread, device) each
    ClusterState object is used from, and the devices of its tensors after each call."""
    seen = defaultdict(set)
    real = P.sparse_attention

    def spy(q, k, v, *, config=None, state=None, **kw):
        out = real(q, k, v, config=config, state=state, **kw)
        seen[id(state)].add((threading.get_ident(), str(q.device)))
        for t in (state.q_centroids, state.k_centroids):
            if t is not None:
                assert t.device == q.device, f"state tensor on {t.device} used for a call on {q.device}"
        return out

    monkeypatch.setattr(P, "sparse_attention", spy)
    return seen


def test_clones_sampled_concurrently_equal_sampled_one_after_the_other(monkeypatch):
    dm = _tiny_wan()
    xa, ca = _inputs(1)
    xb, cb = _inputs(2)

    # one after the other, each alone (its own patched model: no calibrated plan carried over)
    _, (c1,) = _patched_clones(1)
    _, (c2,) = _patched_clones(1)
    seq_a = _sample(c1, dm, xa, ca)
    seq_b = _sample(c2, dm, xb, cb)
    solo = P.get_run(c2).last_run
    assert solo["sparse_calls"] > 0 and solo["mean_density"] < 1.0, solo["summary"]

    # concurrently: two threads in lockstep at every step (a barrier before each forward), so
    # their forwards interleave through the one shared holder
    seen = _spy_states(monkeypatch)
    patched, (d1, d2) = _patched_clones()
    holder = P.get_run(patched)
    assert P.get_run(d1) is holder and P.get_run(d2) is holder   # clones share the holder ...
    barrier = threading.Barrier(2, timeout=120)
    results, errors = {}, []

    def worker(name, clone, x, ctx):
        try:
            results[name] = _sample(clone, dm, x, ctx, gate=barrier.wait)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            barrier.abort()

    ts = [threading.Thread(target=worker, args=a) for a in (("a", d1, xa, ca), ("b", d2, xb, cb))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    assert not errors, errors
    torch.testing.assert_close(results["a"], seq_a, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results["b"], seq_b, atol=1e-6, rtol=1e-6)
    # ... but no ClusterState was used from two threads or two devices
    assert len(seen) >= 2 * 2 * 2, "expected states per thread x layer x CFG branch"
    assert all(len(v) == 1 for v in seen.values()), dict(seen)
    # the run's stats cover both clones' calls (one summary when the last clone cleans up)
    both = holder.last_run
    assert both["calls"] == 2 * solo["calls"] and both["sparse_calls"] == 2 * solo["sparse_calls"], both["summary"]
    assert both["runs_completed"] == 1
    assert holder.lanes.others == {} and holder.run.states == {}   # lanes dropped at cleanup
    # the calibrated plan (per model and resolution) went into the holder's cache, shared by lanes
    assert len(holder.plan_cache) == 1 and both.get("plan_source") == "calibration"


def test_a_second_device_gets_its_own_lane():
    """Lanes are keyed by (thread, device): the same thread on another device (the `meta` device
    stands in for a second GPU; only the forward's layout step runs there) never gets the first
    device's state holder, and the first device's states stay on it."""
    dm = _tiny_wan()
    patched, (c1,) = _patched_clones(1)
    holder = P.get_run(patched)
    for cb in c1.get_all_callbacks(pe.CallbacksMP.ON_PRE_RUN):
        cb(c1)
    cpu_lane = holder.lane(torch.device("cpu"))
    meta_lane = holder.lane(torch.device("meta"))
    assert cpu_lane is holder.run and meta_lane is not holder.run and meta_lane.holder is holder
    assert holder.lane(torch.device("meta")) is meta_lane
    # a forward's layout on the meta device lands in the meta lane
    x = torch.zeros(2, 16, 3, 8, 8, device="meta")
    to = {"sigmas": torch.tensor([0.5, 0.5]), "cond_or_uncond": [0, 1]}
    P._begin_forward(holder, dm, (x, None, torch.zeros(2, 16, 64, device="meta")), {"transformer_options": to})
    assert to[P.FWD_KEY].run is meta_lane and meta_lane.forwards == 1 and holder.run.forwards == 0
    # a real forward on the CPU uses the holder's own lane; its states hold CPU tensors only
    xa, ca = _inputs(3)
    to = {"sigmas": torch.tensor([0.2, 0.2]), "cond_or_uncond": [0, 1],
          "optimized_attention_override": holder.override,
          "wrappers": {pe.WrappersMP.DIFFUSION_MODEL: {P.WRAPPER_KEY: c1.get_wrappers(
              pe.WrappersMP.DIFFUSION_MODEL, P.WRAPPER_KEY)}}}
    for sig in (0.2, 0.1):
        to["sigmas"] = torch.tensor([sig, sig])
        with torch.no_grad():
            dm(xa, torch.tensor([sig * 1000] * 2), ca, transformer_options=to)
    assert holder.run.states and not meta_lane.states
    assert {(layer, br) for layer, br in holder.run.states} == {(l, b) for l in range(2) for b in ("c0", "u0")}
    for st in holder.run.states.values():
        for t in (st.q_centroids, st.k_centroids):
            assert t is None or t.device.type == "cpu"
    for cb in c1.get_all_callbacks(pe.CallbacksMP.ON_CLEANUP):
        cb(c1)
    assert holder.last_run["forwards"] == 3    # 2 CPU forwards + the meta one, folded into one summary
