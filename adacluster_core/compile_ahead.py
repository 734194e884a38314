"""Compile a sparse call's Triton kernels ahead of time, on a background thread.

    ca = CompileAhead(n_tokens, heads, head_dim, dtype, device, config, always_dense_range).start()
    ...                 # dense warmup steps run meanwhile
    if ca.ready(): ...  # the first sparse call finds its kernels compiled

A fresh install pays Triton's compilation (seconds per kernel variant, about a dozen variants)
at its first sparse calls: on a small model that is longer than the sparse steps save in a whole
generation. The dense warmup steps come first, so one small sparse call of the same kind (same
token count, head dim, dtype, config and always-dense range; two heads of random data, in the
memory order ComfyUI's attention inputs have) runs on a background thread while they do.
Kernels compiled there are in this process's Triton cache and in Triton's disk cache, which the
next process reuses. Errors are kept (`error`), never raised: the real call then compiles as usual.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import torch

from .config import AdaClusterConfig
from .state import ClusterState


def _compile_heads(heads: int) -> int:
    # Triton specialises integer arguments on "== 1" and "divisible by 16": two heads (or sixteen)
    # give the same kernel variants as the model's head count at a fraction of the work
    if heads <= 2:
        return max(2, heads)
    return 16 if heads % 16 == 0 else 2


class CompileAhead:
    """One background compile of the kernels a sparse call of this kind needs."""

    def __init__(self, n_tokens: int, heads: int, head_dim: int, dtype: torch.dtype, device,
                 config: AdaClusterConfig, always_dense_range: Optional[tuple[int, int]] = None):
        self.n_tokens, self.heads, self.head_dim = int(n_tokens), int(heads), int(head_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self.config = config
        self.always_dense_range = always_dense_range
        self.error: Optional[BaseException] = None
        self.seconds = 0.0
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "CompileAhead":
        self._thread = threading.Thread(target=self._run, name="adacluster-compile-ahead", daemon=True)
        self._thread.start()
        return self

    def ready(self) -> bool:
        """True once the compile run has finished (successfully or not)."""
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            with torch.inference_mode():
                self._sparse_calls()
        except BaseException as e:  # noqa: BLE001 - kept for the caller, never raised on this thread
            self.error = e
        finally:
            self.seconds = time.perf_counter() - t0
            self._done.set()

    def _sparse_calls(self) -> None:
        from .api import sparse_attention

        N, D, H = self.n_tokens, self.head_dim, _compile_heads(self.heads)
        gen = torch.Generator(device=self.device).manual_seed(0)

        def rand():  # [1, H, N, D] as a view of [1, N, H, D], like ComfyUI's q / k / v
            x = torch.randn(1, N, H, D, generator=gen, device=self.device, dtype=torch.float32)
            return x.to(self.dtype).transpose(1, 2)

        q, k, v = rand(), rand(), rand()
        cfg, rng = self.config, self.always_dense_range
        # the calibration call's multi-stage key clustering (stateless: nothing is kept)
        sparse_attention(q, k, v, config=cfg, always_dense_range=rng)
        # first and reuse calls at a fixed key-cluster count (random keys need not pass calibration)
        n_clustered = N - ((rng[1] - rng[0]) if rng else 0)
        ck = max(1, min(max(cfg.k_clusters_init, cfg.top_k), n_clustered))
        fixed = cfg.replace(k_clusters=ck, calibration_dense=False)
        state = ClusterState()
        for _ in range(2):
            sparse_attention(q, k, v, config=fixed, state=state, always_dense_range=rng)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
