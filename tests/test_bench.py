"""The benchmark front door (bench/): the roofline fraction, the refusal to compare unstable
timings, the cached matmul roof, the CSV and the plots, and a tiny end-to-end run of
bench/run.py."""

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# appended, not prepended: the source tree's fastops (no compiled kernels) must not shadow the
# installed one, here or in the processes other tests spawn (they inherit sys.path)
sys.path.append(str(ROOT))
from bench import harness  # noqa: E402


def _result(medians, bytes_moved=8e6, flops=0):
    case = harness.Case(op="op", shape=(1, 2, 3, 4), dtype=torch.float32, layout="nchw", mode="fwd", device="cpu",
                        bytes_moved=int(bytes_moved), make_inputs=None, contenders={}, flops=int(flops))
    res = harness.CaseResult(case)
    for name, med in medians.items():
        res.rows.append(dict(contender=name, case="op", status="ok", median_ms=med, bytes=int(bytes_moved),
                             flops=int(flops)))
    return res


def test_unstable_timings_are_not_compared():
    rows = [dict(contender="fastops"), dict(contender="eager", unstable=True), dict(contender="compile")]
    harness.attach_speedups(rows, {"fastops": 1.0, "eager": 2.0, "compile": 1.5})
    assert rows[0]["speedup_vs_compile"] == pytest.approx(1.5)
    assert rows[0]["speedup_vs_eager"] is None and rows[1]["speedup_vs_compile"] is None
    assert rows[2]["speedup_vs"]["fastops"] == pytest.approx(1 / 1.5)
    harness.attach_speedups(rows[:1] + [dict(contender="eager")], {"fastops": 1.0, "eager": 2.0})
    assert rows[0]["speedup_vs_eager"] == pytest.approx(2.0)


def test_roofline_fraction_takes_the_longer_bound():
    res = _result({"fastops": 1.0}, bytes_moved=10e6, flops=0)  # 10 MB at 20 GB/s: 0.5 ms of 1 ms
    harness.finish_rows(res, 20.0, 20.0, 20.0, matmul_gflops=100.0)
    assert res.rows[0]["roof_fraction"] == pytest.approx(0.5) and res.rows[0]["roof_bound"] == "bytes"
    res = _result({"fastops": 1.0}, bytes_moved=10e6, flops=80e6)  # 80 MFLOP at 100 GFLOP/s: 0.8 ms
    harness.finish_rows(res, 20.0, 20.0, 20.0, matmul_gflops=100.0)
    assert res.rows[0]["roof_fraction"] == pytest.approx(0.8) and res.rows[0]["roof_bound"] == "flops"


def test_cached_roofs_measure_once(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "ROOF_CACHE", tmp_path / "roofs.json")
    calls = []
    monkeypatch.setattr(harness, "matmul_rate", lambda device, dtype: calls.append(dtype) or 123.0)
    first = harness.cached_roofs("cpu", [torch.float32], log=lambda *_: None)
    second = harness.cached_roofs("cpu", [torch.float32], log=lambda *_: None)
    assert first["matmul_gflops"] == second["matmul_gflops"] == {"float32": 123.0} and len(calls) == 1
    harness.cached_roofs("cpu", [torch.float32], refresh=True, log=lambda *_: None)
    assert len(calls) == 2
    assert json.loads((tmp_path / "roofs.json").read_text())[harness.machine_key("cpu")]["matmul_gflops"]


@pytest.mark.slow
def test_run_end_to_end_writes_json_csv_and_plots(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--ops", "activation", "-k", "8x960x7x7", "--mode", "fwd",
           "--rounds", "3", "--contenders", "fastops", "eager", "--out", str(out)]
    env = dict(__import__("os").environ, FASTOPS_BENCH_CACHE=str(tmp_path))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["rows"]
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert {r["contender"] for r in rows} == {"fastops", "eager"} and all(r["median_ms"] for r in rows)
    assert {"op", "shape", "dtype", "layout", "device", "speedup_vs_eager", "roof_fraction", "torch", "date"} <= set(rows[0])
    pytest.importorskip("matplotlib")
    png = out.with_name("r-speedup.png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layers_are_read_off_the_model_builders():
    from bench.layers import conv_layers

    layers = conv_layers(("mobilenet_v2", "xception"))
    keys = {(d["kind"], d["C"], d["OC"], d["H"], d["W"], d["k"], d["stride"]) for d in layers}
    assert ("depthwise", 144, 144, 56, 56, 3, 1) in keys  # MobileNet V2's issue-3 layer
    assert ("depthwise", 96, 96, 112, 112, 3, 2) in keys
    assert ("pointwise", 24, 144, 56, 56, 1, 1) in keys
    assert ("dense", 3, 32, 224, 224, 3, 2) in keys  # the stem
    assert ("depthwise", 728, 728, 14, 14, 3, 1) in keys  # Xception's middle flow (its separable op)
    assert ("pointwise", 728, 728, 14, 14, 1, 1) in keys
    mb2 = [d for d in layers if "mobilenet_v2" in d["networks"]]
    assert sum(d["kind"] == "depthwise" for d in mb2) == len({(d["C"], d["H"], d["stride"]) for d in mb2
                                                              if d["kind"] == "depthwise"})


def test_peak_memory_on_cpu_counts_what_a_call_allocates():
    x = torch.randn(1 << 20)  # 4 MiB

    def run(s):
        both = torch.cat([s, s])  # 8 MiB, alive while the sum runs
        return both.sum()

    assert harness.peak_memory_mb(run, x, "cpu") == pytest.approx(8.0, rel=0.02)
    assert harness.peak_memory_mb(lambda s: s.add_(1), x, "cpu") == pytest.approx(0.0, abs=0.01)


def test_compile_contenders_with_and_without_freezing():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)

    def runner(m):
        def run(s):
            with torch.no_grad():
                return m(s)
        return run

    inference = harness.compile_contenders(lambda: copy.deepcopy(model), runner, "fwd", lambda: x)
    assert list(inference) == ["compile", "compile+freezing"]
    assert list(harness.compile_contenders(lambda: model, runner, "fwd+bwd", lambda: x)) == ["compile"]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        expected = model(x)
    runs = {name: factory() for name, factory in inference.items()}
    # each compiled its own graph: two copies of one module class once shared the first's graph,
    # and "compile+freezing" ran unfrozen
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    for name, run in runs.items():
        torch.testing.assert_close(run(x), expected, rtol=1e-4, atol=1e-5, msg=name)


def test_layers_of_the_other_fused_ops():
    from bench.layers import layers

    got = {(d["kind"], d["C"], d["H"], d.get("S"), d.get("groups")) for d in
           layers(("mobilenet_v3_large", "shufflenet_v1", "shufflenet_v2_x1_0", "xception"))}
    assert ("squeeze_excite", 72, 28, 24, None) in got  # MobileNet V3-Large's first SE
    assert ("channel_shuffle", 240, 14, None, 3) in got  # ShuffleNet V1 g=3
    assert ("concat_shuffle", 116, 14, None, None) in got  # ShuffleNet V2 1.0, each half
    assert ("bn_act", 16, 112, None, None) in got  # the stem's BN + hardswish
    assert any(k[0] == "separable" and k[1] == 728 for k in got)  # Xception's middle flow


@pytest.mark.parametrize("name", ("mobilenet_v1", "shufflenet_v1", "xception"))
def test_plain_twins_of_the_networks_torchvision_lacks(name):
    """The network bench's eager baseline for fastops-only networks computes what the fastops
    model computes, without a fastops op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import fastops
    from bench.bench_networks import plain_twin

    if name == "xception":
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = fastops.models.create_model(name).eval()
    twin = plain_twin(name, model).eval()
    calls = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(func.name())
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        with Spy():
            got = twin(x)
    assert calls and not [c for c in calls if c.startswith("fastops::")]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("family", ("inverted_residual", "shuffle_v2_block", "stem_conv"))
def test_block_cases_agree_with_eager(family):
    """Each block case's fastops contender (fastops.optimize of torchvision's block: the block
    kernel) and eager contender build the same weights and agree on the case's own inputs."""
    import importlib

    module = importlib.import_module(f"bench.bench_{family}")
    cases = [module.make_case(2, layer, torch.float32, "channels_last", "cpu") for layer in module.LAYERS]
    for case in cases:
        s = case.make_inputs(0)
        ours, eager = case.contenders["fastops"](), case.contenders["eager"]()
        assert harness._check(ours(s), eager(s), layout=case.layout_checked)[0] == "ok", case.op
        assert case.flops > 0 and case.bytes_moved > 0


def test_gpu_check_script_parses():
    """bench/gpu_check.sh runs only on a GPU machine (one call a lease): at least its syntax is
    checked here."""
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_kernel_times_dry_run_on_cpu(tmp_path):
    """bench/gpu_kernel_times.py (CUDA graph replays against Python-launched calls) on a CPU: the
    calls are timed, the graph column says why there is none."""
    from bench import gpu_kernel_times

    out = tmp_path / "kt.json"
    assert gpu_kernel_times.main(["--device", "cpu", "--ops", "shuffle", "-k", "g2 8x232x14x14", "--mode", "fwd",
                                  "--layout", "channels_last", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["contender"] for r in rows] == ["eager", "fastops"]
    assert all(r["called_ms"] > 0 and r["graph_ms"] == "no CUDA" for r in rows), rows


def test_depthwise_separable_training_case_contenders_agree():
    """Issue 3's training case: every contender builds its own DepthwiseSeparable / eager twin;
    they must hold the same weights, or the outputs are checked against another network's (until
    2026-11-30 each drew its own and fastops' row always read "mismatch")."""
    from bench import bench_dwconv

    case = bench_dwconv.make_separable_case(2, (16, 24, 10, 10), torch.float32, "channels_last", "cpu")
    s = case.make_inputs(0)
    ref = case.contenders["eager"]()(s)
    status, err = harness._check(case.contenders["fastops"]()(s), ref, backward=True)
    assert status == "ok", (status, err)


def test_a_mismatch_is_arbitrated_by_the_float64_truth():
    """Where a contender and the reference disagree, Case.truth (float64) decides: a contender at
    least as close to it as the reference is ok (with a note); one further off stays "mismatch"."""
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    off = torch.zeros_like(x)
    off.view(-1)[:40] = 1.0  # 40 elements off by 1: as a kink flipped in a float32 program

    def case(reference_off, contender_off):
        return harness.Case(
            op="toy", shape=tuple(x.shape), dtype=torch.float32, layout="nchw", mode="fwd", device="cpu",
            bytes_moved=2 * x.numel() * 4, make_inputs=lambda k: {"args": (x,)},
            contenders={"eager": lambda: (lambda s: s["args"][0] * 2 + reference_off),
                        "fastops": lambda: (lambda s: s["args"][0] * 2 + contender_off)},
            truth=lambda s: s["args"][0].double() * 2)

    settings = harness.Settings(rounds=1, warmup=0, target_s=1e-4, rotate=False, memory=False)
    right = {r["contender"]: r for r in harness.run_case(case(off, 0), settings).rows}["fastops"]
    assert right["status"] == "ok" and "nearer float64 (0 elements out of tolerance, eager 40)" in right["check_note"]
    wrong = {r["contender"]: r for r in harness.run_case(case(0, off), settings).rows}["fastops"]
    assert wrong["status"] == "mismatch" and "float64: 40 elements out of tolerance, eager 0" in wrong["check_note"]
