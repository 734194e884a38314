# Installed as sitecustomize.py into the dev/test venv by scripts/setup_env.sh (never shipped
# with the node pack, never needed by users with a normal ComfyUI install).
#
# Why: the dev venv uses the CPU build of torch 2.13.0, but PyPI's torchvision 0.28.0 is a CUDA
# build whose compiled ops cannot load next to it. torchvision's _meta_registrations.py then calls
# torch.library.register_fake("torchvision::nms") for an op that was never defined and the import
# fails. ComfyUI core imports torchvision (transforms only), so we define the two op schemas
# right before torchvision is imported for the first time. The real C++ kernels stay unavailable.
import importlib.abc
import sys

_LIBS = []


class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            import torch

            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
            _LIBS.append(lib)
        except Exception:  # already defined (real ops loaded) or torch missing: do nothing
            pass
        return None  # let the normal import machinery find torchvision


sys.meta_path.insert(0, _DefineTorchvisionOps())
