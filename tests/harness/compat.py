"""Test data for the compatibility matrix (tests/comfy/test_compat_*.py): what users stack beside
AdaCluster, made at test time (stdlib + torch + safetensors; `gguf` only for the GGUF file).

* `make_wan_lora(path, model_path)`: a tiny rank-4 LoRA for the tiny Wan checkpoint, in the key
  format of published Wan LoRAs (`diffusion_model.<module>.lora_A/lora_B.weight` + `.alpha`),
  which ComfyUI's LoRA loader maps onto Wan's weights (0.3.75 and upstream).
* `shared_dir()` / `gguf_pack_tarball()`: the shared test data (`../shared` relative to the repo
  root in CI; `ADACLUSTER_SHARED_DIR` overrides), None when absent.
* `install_gguf_pack(tarball, dest)`: unpack city96's ComfyUI-GGUF into a test folder (never into
  the repo); the test server loads it as a custom node pack.
* `make_gguf(src, dst, pack_dir, qtype)`: the pack's own `tools/convert.py` makes an F16 GGUF;
  `qtype="Q8_0"` then re-quantizes its 2-D weights with the `gguf` package (the format users
  download), and Wan's 5-D patch embedding (which convert.py sets aside) is added back as F32.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[2]
GGUF_TARBALL_GLOB = "ComfyUI-GGUF-*.tar.gz"

# Modules of each Wan block a LoRA usually touches (attention projections and the FFN).
WAN_LORA_MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o",
                    "ffn.0", "ffn.2")


def make_wan_lora(path, model_path, rank: int = 4, std: float = 0.05, seed: int = 7) -> dict:
    """Write a LoRA for every block of the Wan checkpoint at `model_path`; returns {key: shape}.
    Both factors are random (not the usual zero-initialised B) so the LoRA changes the output."""
    sd = load_file(str(model_path))
    g = torch.Generator().manual_seed(seed)
    out = {}
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    for b in blocks:
        for mod in WAN_LORA_MODULES:
            w = sd.get(f"blocks.{b}.{mod}.weight")
            if w is None or w.ndim != 2:
                continue
            key = f"diffusion_model.blocks.{b}.{mod}"
            out[key + ".lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g) * std
            out[key + ".lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g) * std
            out[key + ".alpha"] = torch.tensor(float(rank))
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return {k: tuple(v.shape) for k, v in out.items()}


def shared_dir() -> Optional[Path]:
    env = os.environ.get("ADACLUSTER_SHARED_DIR")
    d = Path(env) if env else REPO_ROOT.parent / "shared"
    return d if d.is_dir() else None


def gguf_pack_tarball() -> tuple[Optional[Path], str]:
    """(tarball, "") or (None, why not) for city96's ComfyUI-GGUF in <shared>/third-party/."""
    d = shared_dir()
    if d is None:
        where = os.environ.get("ADACLUSTER_SHARED_DIR") or str(REPO_ROOT.parent / "shared")
        return None, f"no shared test data at {where} (set ADACLUSTER_SHARED_DIR to the folder holding third-party/)"
    found = sorted((d / "third-party").glob(GGUF_TARBALL_GLOB))
    if not found:
        return None, f"no {GGUF_TARBALL_GLOB} in {d / 'third-party'}"
    return found[-1], ""


def install_gguf_pack(tarball, dest) -> Path:
    """Unpack the ComfyUI-GGUF tarball under `dest`; returns the pack folder (has nodes.py)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tf:
        try:
            tf.extractall(dest, filter="data")
        except TypeError:  # Python < 3.11.4: no extraction filters
            tf.extractall(dest)
    packs = [p.parent for p in dest.rglob("nodes.py") if (p.parent / "loader.py").is_file()]
    if not packs:
        raise RuntimeError(f"{tarball} holds no ComfyUI-GGUF pack (nodes.py + loader.py)")
    return packs[0]


def make_gguf(src, dst, pack_dir, qtype: str = "F16", python: str = sys.executable) -> Path:
    """GGUF file of the safetensors checkpoint `src` through the pack's tools (run in a scratch
    folder: convert.py writes the 5-D tensor fix file into its working directory)."""
    dst = Path(dst)
    work = dst.parent / (dst.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    tools = Path(pack_dir) / "tools"
    f16 = work / "f16.gguf"
    for f in work.glob("fix_5d_tensors_*.safetensors"):
        f.unlink()

    def run(*args):
        r = subprocess.run([python, *map(str, args)], cwd=work, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                               f"{r.stderr[-3000:]}")

    run(tools / "convert.py", "--src", src, "--dst", f16)
    # convert.py leaves tensors with more than 4 dims (Wan's patch embedding) in a side file; the
    # pack's fix_5d_tensors.py adds them back but fails on current numpy, so add them here
    extra = {}
    for f in work.glob("fix_5d_tensors_*.safetensors"):
        extra.update(load_file(str(f)))
    requantize_gguf(f16, dst, qtype, extra=extra)
    return dst


def requantize_gguf(src, dst, qtype: str = "Q8_0", extra: Optional[dict] = None) -> None:
    """Copy a GGUF file, quantizing its F16 2-D weights to `qtype` ("F16": unchanged; rows must be a
    multiple of the block size, 32 for Q8_0); other tensors as they are; `extra` tensors
    (name -> torch tensor) are added as F32.""" 
    import gguf
    import numpy as np

    qt = getattr(gguf.GGMLQuantizationType, qtype.upper())
    block = gguf.GGML_QUANT_SIZES[qt][0]
    requant = qt != gguf.GGMLQuantizationType.F16
    reader = gguf.GGUFReader(str(src))
    arch_field = reader.get_field("general.architecture")
    arch = str(arch_field.parts[arch_field.data[-1]], encoding="utf-8")
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qt == gguf.GGMLQuantizationType.Q8_0
                         else gguf.LlamaFileType.MOSTLY_F16)
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF stores dims fastest-first
        if requant and t.tensor_type == gguf.GGMLQuantizationType.F16 and len(shape) == 2 and shape[-1] % block == 0:
            data = np.asarray(t.data, dtype=np.float16).reshape(shape).astype(np.float32)
            writer.add_tensor(t.name, gguf.quants.quantize(data, qt), raw_dtype=qt)
        else:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    for name, v in (extra or {}).items():
        data = v.float().numpy()
        writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.F32),
                          raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file(path=str(dst))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
