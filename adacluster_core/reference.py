"""Plain-PyTorch references (fp32 maths): the `torch` backend and the ground truth of the tests.

The kernels' references live with the kernels (`kernels/torch_ref.py`: each custom op's CPU kernel
too) and are re-exported here for the modules above them; `dense_attention_ref` is this module's
own. Clarity over speed; never on the GPU hot path."""
from __future__ import annotations

import torch

from .kernels.torch_ref import (centroid_update_ref, cluster_bounds_ref, gather_kv_ref,  # noqa: F401
                                kmeans_assign_ref, varblock_attention_ref)


def dense_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                        key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 dense attention, q/k/v [..., N, D]; key_mask additive, broadcastable to [..., 1, Nk]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if key_mask is not None:
        s = s + key_mask.float()
    return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)
