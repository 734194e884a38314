"""adacluster_core.tune on synthetic captures (no ComfyUI): loading, per-layer search, profile."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from adacluster_core import tune

H, N, D = 2, 96, 64


def _clustered(n, d, centers, gen, noise=0.05):
    c = torch.randn(centers, d, generator=gen) * 2.0
    lab = torch.randint(0, centers, (n,), generator=gen)
    return c[lab], noise


def write_capture(path, layers=(0, 1), steps=(0, 1), txt=0, hard_layer=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors, calls = {}, []
    for layer in layers:
        # clustered keys (6 groups per head), queries peaked on their group; steps drift slightly
        k0 = torch.stack([_clustered(N, D, 6, gen)[0] for _ in range(H)])
        q0 = k0[:, torch.randperm(N, generator=gen)] * 0.5
        for step in steps:
            key = f"L{layer}.S{step}"
            if layer == hard_layer:   # random q/k: attention is spread out, hard to sparsify
                q = torch.randn(H, N, D, generator=gen) * 0.05
                k = torch.randn(H, N, D, generator=gen) * 0.05
            else:
                k = k0 + 0.05 * torch.randn(H, N, D, generator=gen)
                q = q0 + 0.05 * torch.randn(H, N, D, generator=gen)
            v = torch.randn(H, N, D, generator=gen)
            tensors.update({f"{key}.q": q.contiguous(), f"{key}.k": k.contiguous(), f"{key}.v": v.contiguous()})
            calls.append({"key": key, "layer": layer, "step": step, "sigma": 1.0 - 0.1 * step, "n_tokens": N})
    meta = {"format": tune.CAPTURE_FORMAT, "family": "wan", "model": "synthetic", "grid": json.dumps([1, 8, 12]),
            "n_vid": str(N - txt), "n_txt": str(txt), "txt_first": "true",
            "text_range": json.dumps([0, txt] if txt else None), "n_layers": str(max(layers) + 1),
            "heads_total": str(H), "head_dim": str(D), "dtype": "float32", "heads": json.dumps(list(range(H))),
            "calls": json.dumps(calls), "config": "null", "skipped": "0"}
    save_file(tensors, str(path), metadata=meta)
    return path


BASE = {"q_clusters": 8, "k_clusters": 12, "backend": "torch"}


def test_load_capture(tmp_path):
    cap = tune.load_capture(str(write_capture(tmp_path / "c.safetensors")))
    assert cap.meta["family"] == "wan" and cap.text_range is None
    assert len(cap.calls) == 4 and cap.calls[0].q.shape == (1, H, N, D)
    assert sorted(cap.layers()) == [0, 1]


def test_not_a_capture(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(p), metadata={"format": "other"})
    with pytest.raises(ValueError, match="not an AdaCluster capture"):
        tune.load_capture(str(p))


@pytest.mark.parametrize("target", [0.05, 0.01])
def test_tune_meets_target_and_replays(tmp_path, target):
    cap = tune.load_capture(str(write_capture(tmp_path / "c.safetensors")))
    prof = tune.tune(cap, target, overrides=dict(BASE), backend="torch")
    assert prof["format"] == tune.PROFILE_FORMAT
    cheaper_checked = 0
    for key, e in prof["layers"].items():
        assert e["error"] <= target
        if e["mode"] == "sparse":
            assert 0 < e["density"] < 1 and e["k_clusters"] == 12 and e["q_clusters"] == 8
            # the chosen setting replays to the recorded error; the next cheaper ladder step misses the target
            calls = cap.layers()[int(key)]
            refs = [tune.dense_reference(c) for c in calls]
            base = tune.base_config(cap, dict(BASE), "torch")
            fields = {f: e[f] for f in ("top_k", "selection", "top_p", "max_density", "q_clusters", "k_clusters")
                      if f in e}
            chosen = base.replace(**fields)
            r = tune.replay(calls, refs, chosen, None)
            assert r["error"] == pytest.approx(e["error"], rel=1e-5)
            assert r["density"] == pytest.approx(e["density"], rel=1e-6)
            # the next cheaper step of the chosen ladder misses the target (else it would have won)
            if e["max_density"] >= 1.0:
                ladder, field = tune.TOP_K_LADDER, "top_k"
            else:
                ladder, field = tune.DENSITY_LADDER, "max_density"
            i = ladder.index(e[field])
            if i > 0:
                cheaper = tune.replay(calls, refs, chosen.replace(**{field: ladder[i - 1]}), None)
                assert cheaper["error"] > target, (key, field, ladder[i - 1], cheaper["error"])
                assert cheaper["density"] <= e["density"] + 1e-9
                cheaper_checked += 1
    if target == 0.01:   # this capture needs more than the first ladder step at 0.01 (0.05: top_k 1 suffices)
        assert cheaper_checked > 0
    assert prof["predicted_speedup"] >= 1.0
    table = tune.format_table(prof)
    assert "predicted attention speedup" in table


def test_hard_layer_falls_back_to_dense(tmp_path):
    cap = tune.load_capture(str(write_capture(tmp_path / "c.safetensors", hard_layer=1)))
    prof = tune.tune(cap, 0.001, overrides=dict(BASE), backend="torch")
    assert prof["layers"]["1"]["mode"] == "dense" and "reason" in prof["layers"]["1"]
    assert prof["layers"]["1"]["predicted_cost"] == 1.0


def test_looser_target_is_cheaper(tmp_path):
    cap = tune.load_capture(str(write_capture(tmp_path / "c.safetensors")))
    tight = tune.tune(cap, 0.02, overrides=dict(BASE), backend="torch")
    loose = tune.tune(cap, 0.3, overrides=dict(BASE), backend="torch")
    for key in tight["layers"]:
        assert loose["layers"][key]["density"] <= tight["layers"][key]["density"] + 1e-9


def test_text_range_and_top_p(tmp_path):
    cap = tune.load_capture(str(write_capture(tmp_path / "c.safetensors", txt=16, layers=(0,), steps=(0,))))
    assert cap.text_range == (0, 16)
    prof = tune.tune(cap, 0.1, overrides=dict(BASE), backend="torch", top_p=True)
    e = prof["layers"]["0"]
    assert e["error"] <= 0.1
    assert e["candidates_tried"] > 1


def test_cost_model_decides_sparse_or_dense(tmp_path):
    """What the cost model does to the profile (not the formula restated): the predicted speedup
    is layers / the sum of per-layer costs; a setting predicted no faster than dense is not used;
    the pooled tail's overhead is charged exactly to the settings that use it; cost rises with density."""
    cap = tune.load_capture(str(write_capture(tmp_path / "c.safetensors")))
    prof = tune.tune(cap, 0.05, overrides=dict(BASE), backend="torch")
    costs = [e["predicted_cost"] for e in prof["layers"].values()]
    assert prof["predicted_speedup"] == pytest.approx(len(costs) / sum(costs))
    sparse = [k for k, e in prof["layers"].items() if e["mode"] == "sparse"]
    assert sparse and all(prof["layers"][k]["predicted_cost"] < 1.0 for k in sparse)
    for k in sparse:
        e = prof["layers"][k]
        no_pool = tune.tune(cap, 0.05, overrides=dict(BASE), backend="torch", pooled_overhead=0.0)["layers"][k]
        if e.get("pooled_tail") and no_pool["mode"] == "sparse" and no_pool["density"] == e["density"]:
            assert e["predicted_cost"] - no_pool["predicted_cost"] == pytest.approx(tune.POOLED_OVERHEAD)
    # an overhead of one dense call: no sparse setting can be faster, every layer runs dense and says why
    slow = tune.tune(cap, 0.05, overrides=dict(BASE), backend="torch", overhead=1.0)
    for k in sparse:
        assert slow["layers"][k]["mode"] == "dense" and "not faster than dense" in slow["layers"][k]["reason"]
    assert slow["predicted_speedup"] == pytest.approx(1.0)
    assert tune.predicted_cost(0.1) < tune.predicted_cost(0.2) < tune.predicted_cost(0.9)


def test_cli_writes_profile_loadable_by_rules(tmp_path, capsys):
    src = write_capture(tmp_path / "c.safetensors")
    out = tmp_path / "p.json"
    rc = tune.main([str(src), "--target-error", "0.05", "--out", str(out), "--backend", "torch", "--device", "cpu",
                    "--set", "q_clusters=8", "--set", "k_clusters=12"])
    assert rc == 0
    prof = json.loads(out.read_text())
    assert set(prof["layers"]) == {"0", "1"}
    txt = capsys.readouterr().out
    assert "layer" in txt and "predicted attention speedup" in txt
    import importlib.util
    import sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("_lr", Path(__file__).parents[2] / "nodes" / "layer_rules.py")
    lr = importlib.util.module_from_spec(spec)
    sys.modules["_lr"] = lr
    spec.loader.exec_module(lr)
    rules = lr.parse_rules(lr.profile_to_rules_text(prof), fields=dict(lr.DEFAULT_FIELDS, max_density=(float, int)))
    for key, e in prof["layers"].items():
        mode, ov = rules.resolve(int(key), 2)
        assert mode == e["mode"]
        if e["mode"] == "sparse":
            assert ov["top_k"] == e["top_k"] and ov["k_clusters"] == 12
            assert ov.get("max_density") == e.get("max_density")


def test_incomplete_capture_refused_unless_allowed(tmp_path, capsys):
    from safetensors import safe_open
    src = write_capture(tmp_path / "c.safetensors")
    with safe_open(str(src), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta["complete"] = "false"
    part = tmp_path / "part.safetensors"
    save_file(tensors, str(part), metadata=meta)
    with pytest.raises(ValueError, match="incomplete capture.*--allow-incomplete"):
        tune.load_capture(str(part))
    assert tune.main([str(part), "--backend", "torch", "--device", "cpu", "--out", str(tmp_path / "p.json")]) == 2
    assert "incomplete capture" in capsys.readouterr().err and not (tmp_path / "p.json").exists()
    assert tune.main([str(part), "--backend", "torch", "--device", "cpu", "--out", str(tmp_path / "p.json"),
                      "--allow-incomplete", "--set", "q_clusters=8", "--set", "k_clusters=12"]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["layers"]
