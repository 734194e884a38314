"""AdaCluster Capture helpers in-process (CPU): head subsampling, size estimate, file naming
inside the output folder, the writer's format."""
from __future__ import annotations

import json

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    C = load_nodes_module("capture")
    P = load_nodes_module("patcher")


def test_kept_heads_and_expected_bytes():
    assert C._kept_heads(12, 0) == list(range(12))
    assert C._kept_heads(12, 4) == [0, 4, 7, 11]
    assert C._kept_heads(12, 1) == [0]
    assert C._kept_heads(2, 8) == [0, 1]
    # Wan 14B, 75,600 tokens, 4 heads x 128, bf16: ~221 MiB per (layer, step) (README / tooltip)
    assert C.expected_bytes(1, 1, 4, 75600, 128, 2) / 2**20 == pytest.approx(221.5, rel=0.05)


def _fc(step=0):
    fc = P.ForwardContext(run=None, family="wan", grid=(1, 2, 4), n_vid=8, n_txt=0, n_layers=2, sigma=0.5, step=step)
    return fc


def test_writer_stays_in_output_folder_and_writes_format(tmp_path):
    from safetensors import safe_open
    out = tmp_path / "output"
    cap = C.CaptureRun("*", "*", 1, 1.0, "../../escape/cap", str(out))
    B, H, L, D = 1, 2, 8, 64
    q, k, v = (torch.randn(B, L, H * D) for _ in range(3))
    cap.add(_fc(), 0, (B, H, L, D, 0, None), q, k, v, None, False)
    cap.add(_fc(), 0, (B, H, L, D, 0, None), q, k, v, None, False)      # same (layer, step): kept once
    path = cap.write("WanModel")
    assert path and str(out.resolve()) in str(tmp_path.joinpath(path).resolve())
    with safe_open(path, "pt") as h:
        meta = h.metadata()
        assert set(h.keys()) == {"L0.S0.q", "L0.S0.k", "L0.S0.v"}
        torch.testing.assert_close(h.get_tensor("L0.S0.q"), q[0].view(L, H, D).transpose(0, 1)[:1])
    assert meta["format"] == C.CAPTURE_FORMAT and json.loads(meta["heads"]) == [0]
    assert len(json.loads(meta["calls"])) == 1
    # second file gets the next number
    cap.add(_fc(1), 1, (B, H, L, D, 0, None), q, k, v, None, False)
    p2 = cap.write("WanModel")
    assert p2 != path and p2.endswith("_00002.safetensors")


def test_nothing_captured_writes_nothing(tmp_path):
    cap = C.CaptureRun("*", "*", 1, 1.0, "x/cap", str(tmp_path))
    assert cap.write() is None and "nothing captured" in cap.last_info


def test_capture_bounds_are_enforced(tmp_path):
    for kw, field in ((dict(max_mb=1e12), "max_mb"), (dict(max_mb=-5.0), "max_mb"), (dict(max_mb=float("nan")), "max_mb"),
                      (dict(max_heads=-3), "max_heads"), (dict(max_heads=10**6), "max_heads"),
                      (dict(prefix="x" * 300), "filename_prefix")):
        args = dict(layers="*", steps="*", max_heads=1, max_mb=1.0, prefix="cap", out_dir=str(tmp_path))
        args.update(kw)
        with pytest.raises(ValueError, match=f"^{field}"):
            C.CaptureRun(**args)


def _capture_with_cleanup(tmp_path, out_dir):
    """A capture on a minimal ModelPatcher, one call added; returns (patcher, CaptureRun, on_cleanup)."""
    import comfy.model_patcher
    import comfy.patcher_extension as pe
    mp = comfy.model_patcher.ModelPatcher(torch.nn.Linear(1, 1), torch.device("cpu"), torch.device("cpu"))
    m, cap = C.capture_model(mp, "*", "*", 1, 1.0, "sub/cap", out_dir=str(out_dir))
    B, H, L, D = 1, 2, 8, 64
    q, k, v = (torch.randn(B, L, H * D) for _ in range(3))
    cap.add(_fc(), 0, (B, H, L, D, 0, None), q, k, v, None, False)
    (wrapper,) = m.get_wrappers(pe.WrappersMP.SAMPLER_SAMPLE, C.CAPTURE_KEY)
    (cleanup,) = m.get_callbacks(pe.CallbacksMP.ON_CLEANUP, C.CAPTURE_KEY)
    return m, cap, wrapper, cleanup


class _Exec:   # the executor handed to a SAMPLER_SAMPLE wrapper
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *a, **kw):
        return self.fn(*a, **kw)


def test_partial_capture_marked_incomplete_and_refused_by_the_tuner(tmp_path):
    from safetensors import safe_open

    from adacluster_core import tune
    out = tmp_path / "output"
    # an interrupted run: the sampler never returns, cleanup still writes the file
    m, cap, wrapper, cleanup = _capture_with_cleanup(tmp_path, out)

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        wrapper(_Exec(interrupted))
    cleanup(m)
    (f,) = sorted((out / "sub").glob("*.safetensors"))
    with safe_open(str(f), "pt") as h:
        assert h.metadata()["complete"] == "false"
    with pytest.raises(ValueError, match="incomplete capture"):
        tune.load_capture(str(f))
    assert len(tune.load_capture(str(f), allow_incomplete=True).calls) == 1
    assert tune.main([str(f), "--backend", "torch", "--device", "cpu", "--out", str(tmp_path / "p.json")]) == 2
    assert not (tmp_path / "p.json").exists()
    # a finished run: complete=true
    m, cap, wrapper, cleanup = _capture_with_cleanup(tmp_path, out)
    assert wrapper(_Exec(lambda: "latent")) == "latent"
    cleanup(m)
    f2 = sorted((out / "sub").glob("*.safetensors"))[-1]
    with safe_open(str(f2), "pt") as h:
        assert h.metadata()["complete"] == "true"


def test_write_failure_fails_a_finished_run(tmp_path):
    out = tmp_path / "output"
    m, cap, wrapper, cleanup = _capture_with_cleanup(tmp_path, out)
    wrapper(_Exec(lambda: None))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sub").write_text("a file where the folder should be")
    with pytest.raises(RuntimeError, match="AdaCluster Capture: could not write the capture file"):
        cleanup(m)
    # after a run that failed anyway, the write error is only logged (the run's own error stays)
    m, cap, wrapper, cleanup = _capture_with_cleanup(tmp_path, tmp_path / "output2")
    (tmp_path / "output2").mkdir()
    (tmp_path / "output2" / "sub").write_text("blocker")
    cleanup(m)
