"""Kernel launches, aten ops and host time of one warm reuse call of `sparse_attention`, per stage.

    TRITON_INTERPRET=1 python bench/launch_count.py [--shape 1,2,2048,64] [--dtype bf16] [--text 0]
                                                    [--reps 5] [--json out.json]

Runs on CPU (the Triton kernels run in the interpreter), warms a ClusterState with the balanced
Wan preset (pooled tail on, adaptive key count) until the call is a "reuse" call, then measures:

  ops      aten ops that would each be one device kernel on the GPU, counted by a
           TorchDispatchMode. View / metadata-only ops and bare allocations (VIEW_LIKE below,
           plus every op whose schema says it returns a view) launch nothing and are listed
           apart. Ops issued by the Triton interpreter itself are not counted.
  triton   Triton kernel launches (JITFunction.run / InterpretedFunction.run).
  syncs    ops that read a device value on the host (.item(), nonzero, ...): must stay 0.
  host ms  wall time of the call with the Triton launches stubbed out (median of --reps).

Why host ms is a fair proxy of the GPU call's fixed overhead: on the GPU the reuse call at small
N is launch-bound, i.e. its cost outside the attention kernel is Python + torch dispatch + one
launch per op. On CPU with small tensors the same Python and dispatcher run and each aten op's
CPU kernel costs a few microseconds (close to a CUDA launch), while the interpreter (seconds) is
left out. What the proxy misses: CUDA launch latency per op and Triton's own launcher cost
(JITFunction.run binds arguments and looks up the compiled kernel, ~10-20 us per launch on a
GPU host), hence the op and launch counts next to it. `est GPU us` applies a simple model
(--op-us per aten op, --launch-us per Triton launch, plus the measured host time) only to rank
the stages; the real numbers come from bench/profile_reuse.py on the GPU.

The clustering wrappers (`kernels/kmeans_assign.py`, `centroid_update.py`, `gather_rows.py`)
take the GPU code path here (`--interp-path` keeps the interpreter's), so the counts are the
GPU call's: e.g. the bf16 copy of the centroids for the assignment GEMM exists only there.
The attention stage is one custom op (`adacluster::varblock_attention`); the ops inside it
belong to kernels/varblock_attn.py and are not seen.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

aten = torch.ops.aten
# no device kernel: allocations and metadata (views are found by OpOverload.is_view)
VIEW_LIKE = {
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
    aten._unsafe_view.default, aten._reshape_alias.default, aten.detach.default, aten.alias.default,
    aten.lift_fresh.default, aten.set_.source_Storage_storage_offset, aten.resize_.default,
    aten.scalar_tensor.default,  # a CPU "wrapped number" (e.g. torch.where(c, x, 0.)): no launch
}
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
            aten.unique_dim.default, aten._unique2.default, aten.equal.default, aten.is_nonzero.default}
KERNEL = "[triton kernel]"  # pseudo-stage of the time spent inside a (interpreted) kernel
STAGE_ORDER = ["finite check", "cluster q", "cluster k", "cluster q+k", "cluster (state)", "select",
               "build_layout", "pooled tail", "attention", "co-selection order", "stats", "other"]


class StageProfiler:
    """A stack of stage names kept by wrapped functions: exclusive wall time per stage, and
    the stage an op or a launch belongs to (innermost wrapped function on the stack)."""

    def __init__(self):
        self.stack = ["other"]
        self.t = defaultdict(float)
        self.launches = Counter()
        self.last = time.perf_counter()
        self.stub = False  # True: Triton launches return at once (timing passes)

    def _switch(self):
        now = time.perf_counter()
        self.t[self.stack[-1]] += now - self.last
        self.last = now

    def push(self, name):
        self._switch()
        self.stack.append(name)

    def pop(self):
        self._switch()
        self.stack.pop()

    def reset(self):
        self.t.clear()
        self.launches.clear()
        self.last = time.perf_counter()

    def wrap(self, owner, attr, stage):
        """Replace owner.attr by a wrapper that runs under `stage` (a name, or a function of
        the call's (args, kwargs) returning one). Missing attributes are skipped, so the tool
        works across refactors of the core."""
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        prof = self

        def wrapped(*a, **kw):
            prof.push(stage(a, kw) if callable(stage) else stage)
            try:
                return fn(*a, **kw)
            finally:
                prof.pop()
        wrapped.__wrapped__ = fn
        setattr(owner, attr, wrapped)


def _kmeans_stage(a, kw):
    return "cluster q" if kw.get("normalize") else "cluster k"


def instrument(prof: StageProfiler, gpu_path: bool) -> None:
    """Wrap the stage functions of the core and the Triton launchers."""
    import triton.runtime.jit as tjit
    from triton.runtime.interpreter import InterpretedFunction

    from adacluster_core import api, clustering, guards, layout
    from adacluster_core.kernels import centroid_update, gather_rows, kmeans_assign

    for cls in (tjit.JITFunction, InterpretedFunction):
        run = cls.run

        def counted(self, *a, _run=run, **kw):
            prof.launches[prof.stack[-1]] += 1
            if prof.stub:
                return None
            prof.push(KERNEL)
            try:
                return _run(self, *a, **kw)
            finally:
                prof.pop()
        cls.run = counted
    if gpu_path:  # the wrappers' GPU branches (Hopper's launch-table rows, GEMM operand dtype)
        for mod in (kmeans_assign, centroid_update, gather_rows):
            mod.interpreting = lambda: False
            mod.capability = lambda device: (9, 0)
    prof.wrap(guards.FiniteCheck, "__init__", "finite check")
    prof.wrap(guards.FiniteCheck, "ok", "finite check")
    prof.wrap(api, "_cluster", "cluster (state)")
    prof.wrap(clustering, "kmeans", _kmeans_stage)
    prof.wrap(clustering, "kmeans_pair", "cluster q+k")
    prof.wrap(api, "_select", "select")
    prof.wrap(api, "build_layout", "build_layout")
    prof.wrap(layout, "pooled_tail", "pooled tail")
    prof.wrap(api, "run_layout", "attention")
    prof.wrap(api, "_co_selection_order", "co-selection order")
    prof.wrap(layout.Layout, "pairs", "stats")
    prof.wrap(api, "_density", "stats")
    prof.wrap(api, "_stats", "stats")


class OpCounter(TorchDispatchMode):
    """Counts aten ops per stage (kernel ops, view-like ops, host syncs)."""

    def __init__(self, prof: StageProfiler):
        super().__init__()
        self.prof = prof
        self.ops = defaultdict(Counter)    # stage -> op name -> n
        self.views = Counter()
        self.syncs = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        stage = self.prof.stack[-1]
        if stage != KERNEL:
            name = str(func.overloadpacket.__name__) if func.namespace == "aten" else str(func)
            if func in SYNC_OPS:
                self.syncs[f"{stage}: {name}"] += 1
            if func.is_view or func in VIEW_LIKE:
                self.views[name] += 1
            else:
                self.ops[stage][name] += 1
        return func(*args, **(kwargs or {}))


def make_call(shape, dtype, text: int):
    """(call, state): a warm reuse call of the balanced Wan preset on clusterable inputs."""
    from adacluster_core import AdaClusterConfig, ClusterState, sparse_attention
    from bench.structured import make_structured_qkv

    B, H, N, D = shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    try:  # video-like structure if the generator fits the shape
        t = max(1, -(-N // 256))
        q, k, v, _ = make_structured_qkv(B=B, H=H, grid=(t, 16, 16), D=D, text_tokens=0, dtype=torch.float32,
                                         device="cpu", seed=0)
        q, k, v = (x[:, :, :N].contiguous() for x in (q, k, v))
    except Exception:  # noqa: BLE001 - plain Gaussian inputs are fine for counting
        pass
    q, k, v = (x.to(dtype) for x in (q, k, v))
    cfg = AdaClusterConfig.for_model("wan", "balanced")
    kw = dict(always_dense_range=(N - text, N)) if text else {}
    st = ClusterState()

    def call():
        return sparse_attention(q, k, v, cfg, st, **kw)
    for _ in range(3):  # calibration (dense), first sparse call, first reuse call
        _, stats = call()
    if stats["stage"] != "reuse" or stats["dense"]:
        raise SystemExit(f"not a reuse call: stage {stats['stage']}, reason {stats['reason']!r}")
    return call, stats


def measure(call, prof: StageProfiler, reps: int) -> dict:
    """One counted call (kernels run), then `reps` timed calls with the kernels stubbed out
    (median per stage). Stubbing is safe on the reuse path: shapes never depend on data and
    every index the torch ops use comes from top-k / sort, so garbage outputs index nothing
    out of range; the interpreter's seconds would only be subtracted anyway."""
    counter = OpCounter(prof)
    prof.reset()
    with counter:
        call()
    launches = dict(prof.launches)
    times = defaultdict(list)
    prof.stub = True
    for _ in range(3):
        call()
    for _ in range(reps):
        prof.reset()
        t0 = time.perf_counter()
        call()
        prof._switch()
        wall = time.perf_counter() - t0
        for s, v in prof.t.items():
            times[s].append(v)
        times["__host__"].append(wall - prof.t.get(KERNEL, 0.0))
    prof.stub = False
    return dict(ops={s: dict(c) for s, c in counter.ops.items()}, views=dict(counter.views),
                syncs=dict(counter.syncs), launches=launches,
                host_ms={s: 1e3 * statistics.median(v) for s, v in times.items() if s != KERNEL})


def report(res: dict, op_us: float, launch_us: float, verbose: bool) -> None:
    stages = [s for s in STAGE_ORDER if s in res["ops"] or s in res["launches"] or s in res["host_ms"]]
    stages += sorted(s for s in set(res["ops"]) | set(res["launches"]) if s not in stages and s != KERNEL)
    print(f"{'stage':<20}{'ops':>6}{'triton':>8}{'host ms':>10}{'est GPU us':>12}")
    tot = [0, 0, 0.0, 0.0]
    for s in stages:
        n = sum(res["ops"].get(s, {}).values())
        nl = res["launches"].get(s, 0)
        h = res["host_ms"].get(s, 0.0)
        est = n * op_us + nl * launch_us + 1e3 * h
        tot = [tot[0] + n, tot[1] + nl, tot[2] + h, tot[3] + est]
        print(f"{s:<20}{n:>6}{nl:>8}{h:>10.3f}{est:>12.0f}")
    print(f"{'total':<20}{tot[0]:>6}{tot[1]:>8}{res['host_ms']['__host__']:>10.3f}{tot[3]:>12.0f}")
    print(f"host syncs: {sum(res['syncs'].values())} {res['syncs'] or ''}")
    print("view / metadata ops (not counted): " + ", ".join(f"{k} {v}" for k, v in sorted(res["views"].items())))
    if verbose:
        for s in stages:
            if res["ops"].get(s):
                print(f"  {s}: " + ", ".join(f"{k} {v}" for k, v in sorted(res["ops"][s].items())))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1,2,2048,64", help="B,H,N,D")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--text", type=int, default=0, help="always-dense tokens at the end")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--interp-path", action="store_true", help="keep the wrappers' interpreter branches")
    ap.add_argument("--op-us", type=float, default=6.0, help="model: GPU host cost of one aten op")
    ap.add_argument("--launch-us", type=float, default=20.0, help="model: GPU host cost of one Triton launch")
    ap.add_argument("--json", default="", help="write the measurement here")
    ap.add_argument("-v", "--verbose", action="store_true", help="ops by name per stage")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (CPU, interpreted kernels)")
    torch.set_num_threads(1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    shape = tuple(int(x) for x in a.shape.split(","))
    prof = StageProfiler()
    instrument(prof, gpu_path=not a.interp_path)
    call, stats = make_call(shape, dtype, a.text)
    res = measure(call, prof, a.reps)
    print(f"reuse call {shape} {a.dtype} text={a.text}: Cq {stats['q_clusters']} Ck {stats['k_clusters']} "
          f"top_k {stats['top_k']} density {float(stats['density']):.3f}")
    report(res, a.op_us, a.launch_us, a.verbose)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(shape=shape, dtype=a.dtype, text=a.text, **res), f, indent=1)


if __name__ == "__main__":
    main()
