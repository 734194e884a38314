"""AdaCluster Compare with broken inputs (issue 24): a NaN / Inf pixel is an error naming the input
and the frame (never "identical"), no NaN / Inf reaches the node's JSON, the UI payload or
/history, diff_gain is bounded and finite, the verdict reads the worst frame as well as the mean,
and an all-NaN batch fails with a named error. Offline (the metrics module) and against the real
server (the test pack's AdaClusterTestPoisonImage writes NaN / Inf into decoded-looking frames)."""
from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid

import pytest
import torch

from tests.comfy._helpers import load_nodes_module
from tests.harness.comfy_server import PromptError

cm = load_nodes_module("compare_metrics")
cplot = load_nodes_module("compare_plot")


def _frames(n=3, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h // 8, w // 8, generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).contiguous()


def _strict_json(text: str):
    def bad(c):
        raise ValueError(f"non-finite number {c} in JSON")
    return json.loads(text, parse_constant=bad)


# --------------------------------------------------------------------------------------- offline
@pytest.mark.parametrize("where,value,frame", [
    ("test", float("nan"), 1), ("test", float("inf"), 0), ("reference", float("-inf"), 2),
    ("test", float("nan"), None),
])
def test_non_finite_pixels_are_an_error_naming_input_and_frame(where, value, frame):
    ref = _frames()
    test = ref.clone()
    x = test if where == "test" else ref
    if frame is None:
        x.fill_(value)                        # all-NaN batch
    else:
        x[frame, 3, 4, 1] = value             # one pixel
    with pytest.raises(cm.CompareInputError) as ei:
        cm.frame_metrics(ref, test)
    msg = str(ei.value)
    assert f"`{where}` frame {frame or 0} has non-finite pixels" in msg, msg
    assert ("every frame" in msg) == (frame is None), msg
    with pytest.raises(cm.CompareInputError, match=f"`{where}` frame"):
        cm.check_finite(ref, test)


def test_identical_means_every_frame_identical_and_the_worst_frame_counts():
    # one frame at 4.8 dB, two identical: the old mean of capped PSNRs (68 dB) read "as close as the paper"
    v = cm.verdict((4.8 + 100 + 100) / 3, 4.8, 0)
    assert "frame 0 is at 4.8 dB" in v and v.endswith(cm._band(8.8)) and "paper's results" not in v, v
    assert "identical" not in v
    assert "identical" in cm.verdict(100.0, 100.0)
    assert "paper" in cm.verdict(30.0, 28.5) and "frame" not in cm.verdict(30.0, 28.5)   # ordinary spread
    assert "frame 2 is at 20.0 dB" in cm.verdict(31.0, 20.0, 2)
    ref = _frames()
    test = ref.clone()
    test[0] = torch.rand(test[0].shape, generator=torch.Generator().manual_seed(5))
    psnr, ssim = cm.frame_metrics(ref, test)
    rep = cm.build_report(psnr, ssim)
    assert rep["identical_frames"] == 2 and rep["worst_frame"] == 0 and rep["psnr_mean_db"] > 29
    assert "paper's results" not in rep["verdict"] and "frame 0" in rep["verdict"], rep["verdict"]
    json.dumps(rep, allow_nan=False)


@pytest.mark.parametrize("gain", [float("nan"), float("inf"), -1.0, 0.5, 101.0, 1e300, "8", True, None])
def test_diff_gain_bounded_and_finite(gain):
    ref = _frames()
    with pytest.raises(cm.CompareInputError, match=r"^diff_gain must be a finite number in \[1, 100\]"):
        cm.difference_video(ref, ref, gain)
    d = cm.difference_video(ref, ref * 0.5, 100.0)
    assert torch.isfinite(d).all() and float(d.max()) <= 1.0


def test_report_and_plot_refuse_non_finite_numbers():
    with pytest.raises(cm.CompareInputError):
        cm.build_report([float("nan"), 30.0], [1.0, 0.9])
    with pytest.raises(cm.CompareInputError):
        cm.build_report([30.0], [float("nan")])
    with pytest.raises(ValueError, match="finite"):
        cplot.plot_image([float("nan")] * 3, [float("nan")] * 3)
    rep = cm.sparse_run_summary({"calls": 3, "mean_density": float("nan"), "attention_time_s": float("inf"),
                                 "dense_reasons": {"x": 1}})
    assert rep["mean_density"] is None and rep["attention_time_s"] is None
    json.dumps(rep, allow_nan=False)


# --------------------------------------------------------------------------------------- server
def _prompt(poison: dict | None, on: str = "test", frames: int = 3, diff_gain=8.0) -> dict:
    p = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": frames,
                                                       "color": 0x336699}},
        "cmp": {"class_type": "AdaClusterCompare", "inputs": {"reference": ["img", 0], "test": ["img", 0],
                                                              "diff_gain": diff_gain}},
    }
    if poison is not None:
        p["bad"] = {"class_type": "AdaClusterTestPoisonImage", "inputs": dict({"image": ["img", 0]}, **poison)}
        p["cmp"]["inputs"][on] = ["bad", 0]
    return p


def _raw(srv, path: str) -> str:
    with urllib.request.urlopen(srv.url + path, timeout=30) as r:
        return r.read().decode()


def _post_raw(srv, body: str):
    req = urllib.request.Request(srv.url + "/prompt", data=body.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.server
@pytest.mark.parametrize("poison,on,words", [
    (dict(frame=1, value="nan", whole_frame=False), "test", ["`test` frame 1 has non-finite pixels", "1 of 3"]),
    (dict(frame=0, value="-inf", whole_frame=True), "test", ["`test` frame 0 has non-finite pixels"]),
    (dict(frame=2, value="inf", whole_frame=False), "reference", ["`reference` frame 2 has non-finite pixels"]),
    (dict(frame=-1, value="nan", whole_frame=True), "test", ["`test` frame 0 has non-finite pixels",
                                                             "every frame"]),
])
def test_broken_frames_fail_the_node_naming_input_and_frame(comfy_server, poison, on, words):
    srv = comfy_server
    with pytest.raises(PromptError) as e:
        srv.run_prompt(_prompt(poison, on), timeout=120)
    msg = str(e.value)
    for w in ["AdaCluster Compare"] + words:
        assert w in msg, msg
    assert "identical" not in msg and "cannot convert float NaN" not in msg
    _strict_json(_raw(srv, "/history"))            # /history stays parseable by a browser (no NaN / Infinity)
    _strict_json(_raw(srv, "/history?max_items=64"))


@pytest.mark.server
def test_one_bad_frame_is_not_as_close_as_the_paper_and_history_stays_json(comfy_server):
    srv = comfy_server
    pid = srv.queue_prompt(_prompt(dict(frame=0, value="noise", whole_frame=False)))
    srv.wait_prompt(pid, timeout=120)
    entry = _strict_json(_raw(srv, f"/history/{pid}"))[pid]
    rep = entry["outputs"]["cmp"]["adacluster_compare"][0]
    assert rep["identical_frames"] == 2 and rep["worst_frame"] == 0 and rep["psnr_mean_db"] > 29
    assert "paper's results" not in rep["verdict"] and "frame 0" in rep["verdict"], rep["verdict"]
    assert all(math.isfinite(v) for v in rep["per_frame"]["psnr_db"] + rep["per_frame"]["ssim"])


@pytest.mark.server
@pytest.mark.parametrize("gain", ["NaN", "Infinity", "-Infinity", "1e300", "0.5", "1000"])
def test_diff_gain_nan_or_out_of_range_rejected_at_validation(comfy_server, gain):
    body = json.dumps({"prompt": _prompt(None), "client_id": str(uuid.uuid4())}).replace(
        '"diff_gain": 8.0', f'"diff_gain": {gain}')
    assert f'"diff_gain": {gain}' in body
    status, resp = _post_raw(comfy_server, body)
    assert status == 400, resp
    errs = resp["node_errors"]["cmp"]["errors"]
    assert errs and all("diff_gain" in json.dumps(e) for e in errs), errs
    assert any("diff_gain must be a finite number in [1, 100]" in (e.get("details") or "") for e in errs), errs
    _strict_json(json.dumps(resp))   # the error itself carries no NaN back
