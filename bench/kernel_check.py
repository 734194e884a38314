"""Every kernel case, compiled on the GPU, against the fp32 torch reference: a pass / fail table.

    python bench/kernel_check.py [--quick] [--only varblock_reference,kmeans_assign] [--md FILE]

The cases are `tests/core/kernel_cases.CHECKS`: for each of the four kernels (varblock_attention incl.
the pooled tail, the ComfyUI memory orders, both K / V modes and load paths; kmeans_assign;
centroid_update incl. the fused bounds; gather_kv) the full grid of dtypes, head dims, shapes and
forced launch configs, with the tolerances of the CPU tests (kernel_cases' docstring: fp16 3e-3,
bf16 2e-2 relative L2; fp32 gets fp16's tolerance on the GPU, where its dots run on tf32). The CPU
tests under TRITON_INTERPRET=1 run only the `kernel_cases.INTERP` subset, and the interpreter computes
in fp32: **the bf16 / fp16 arithmetic of the kernels is covered here, on the GPU, not by any CPU
test.** `--quick` runs the `INTERP` subset (on the CPU: `TRITON_INTERPRET=1 python
bench/kernel_check.py --quick`, to check the script itself).

Exit status 0 when every case passes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("ADACLUSTER_STRICT", "1")   # a failing sparse path must fail, not run dense
os.environ.setdefault("TRITON_INTERPRET", "0")    # compiled kernels unless asked otherwise

import torch  # noqa: E402

from core import kernel_cases as kc  # noqa: E402


def run(names, quick: bool, log) -> list[tuple[str, str, str, float, str]]:
    """(check, case, PASS | FAIL, seconds, message) per case."""
    rows = []
    for name in names:
        fn, grid = kc.CHECKS[name]
        for params in (kc.INTERP[name] if quick else grid):
            t0 = time.perf_counter()
            try:
                fn(*params)
                status, msg = "PASS", ""
            except Exception as e:  # noqa: BLE001 - a failing case is a row of the table
                status = "FAIL"
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                log(traceback.format_exc(limit=-3))
            dt = time.perf_counter() - t0
            rows.append((name, kc.case_id(params), status, dt, msg))
            log(f"{status} {name}[{kc.case_id(params)}] {dt:.2f} s {msg}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the CPU tests' subset (kernel_cases.INTERP)")
    ap.add_argument("--only", default="", help="comma-separated check names (default: all)")
    ap.add_argument("--md", default=None, help="append the table to this file")
    a = ap.parse_args(argv)
    names = [n for n in a.only.split(",") if n] or list(kc.CHECKS)
    unknown = set(names) - set(kc.CHECKS)
    if unknown:
        ap.error(f"unknown checks {sorted(unknown)}; known: {', '.join(kc.CHECKS)}")
    dev = torch.cuda.get_device_name() if kc.DEV == "cuda" else "CPU (TRITON_INTERPRET=1)"
    if kc.DEV != "cuda" and not kc.INTERP:
        print("kernel_check: no CUDA device; on the CPU run it under TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    print(f"device: {dev}; torch {torch.__version__}; cases: {'quick (INTERP)' if a.quick else 'all (CHECKS)'}",
          flush=True)
    rows = run(names, a.quick, lambda s: print(s, flush=True))
    n_fail = sum(r[2] == "FAIL" for r in rows)
    table = ["| check | case | result | s | message |", "|---|---|---|---|---|"]
    table += [f"| {n} | {c} | {st} | {t:.2f} | {m} |" for n, c, st, t, m in rows]
    table.append(f"\n{len(rows) - n_fail} passed, {n_fail} failed on {dev}")
    print("\n" + "\n".join(table))
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n".join(table) + "\n\n")
    return 0 if n_fail == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
