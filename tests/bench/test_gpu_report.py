"""bench.gpu_report: the dry run covers every stage with the GPU run's row keys; a run cut short (SIGTERM or
SIGKILL) leaves a valid report naming the finished stages and the interrupted one; the parsing, planning and
matching helpers it relies on."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import gpu_report as gr
from bench.gpu_report import codegen as codegen_stage
from bench.gpu_report import correctness, e2e, microbench, runner
from tests.bench import modded_checkout

REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = ["environment", "correctness", "microbench", "e2e", "codegen"]


def _load(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _stage(data: dict, name: str) -> dict:
    return next(s for s in data["stages"] if s["name"] == name)


def _rows(data: dict, name: str) -> dict:
    return {r["key"]: r for r in _stage(data, name)["rows"]}


def _alive(pid: int) -> bool:
    """True while pid is a live process (a zombie left for a non-reaping init counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------------------------------------------
# The dry run: every stage, the GPU run's row keys
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of every stage (with modded-nanogpt's kernels as peers where the mirror is on this machine)."""
    out = tmp_path_factory.mktemp("gpu_report_dry")
    checkout = modded_checkout.materialise(tmp_path_factory.mktemp("modded"))
    extra = ["--modded-nanogpt", str(checkout)] if checkout else []
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_report", "--out", str(out), "--dry-run",
                           "--budget-s", "300", *extra], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, _load(out), checkout


def _plan_keys(dry_run: bool) -> list[str]:
    ctx = SimpleNamespace(dry_run=dry_run, device="cpu" if dry_run else "cuda", options={})
    return [r.key for r in microbench.microbench_rows(ctx)]


def test_dry_run_keys_equal_gpu_keys():
    """The dry run plans exactly the rows a GPU run plans (tiny shapes, same keys)."""
    dry, gpu = _plan_keys(True), _plan_keys(False)
    assert dry == gpu
    assert len(set(gpu)) == len(gpu), "row keys must be unique"
    for key in ("newton_schulz/124m/attn.{c_k,c_proj,c_q,c_v}/triton", "newton_schulz/124m/mlp.c_fc/torch_muon",
                "newton_schulz/track3/mlp.c_proj/compile", "linear_cross_entropy/124m/fwd+bwd/triton",
                "linear_cross_entropy/124m/fwd+bwd.nocap/liger", "linear_cross_entropy/track3/fwd+bwd/triton",
                "relu2_mlp/124m/backward/triton", "relu2_mlp/track3/forward/eager", "attention/124m/docs.bwd/sdpa",
                "attention/124m/window.fwd/flex", "attention/track3/causal.fwd/fa3",
                "newton_schulz/124m/mlp.c_fc/modded", "linear_cross_entropy/124m/fwd+bwd/modded",
                "relu2_mlp/124m/forward/modded", "linear_cross_entropy/124m/fwd+bwd/chunked"):
        assert key in gpu, key


def test_gpu_cases_use_the_speedrun_shapes():
    by_name = {c.name: c for c in microbench.benchmark_cases(False)}
    big, t3 = by_name["124m"], by_name["track3"]
    assert (big.d, big.n_head, big.head_dim, big.vocab, big.mlp) == (768, 6, 128, 50304, 3072)
    assert big.tokens == 32 * 2048  # the gpt2-124m preset's micro-batch
    assert (t3.d, t3.head_dim, t3.vocab, t3.mlp, t3.batch, t3.seq) == (768, 128, 50304, 3072, 64, 1024)
    assert t3.attn_scale == 0.12 and t3.bias and t3.softcap_kind == "algebraic" and t3.reduction == "sum"
    assert not big.bias and big.softcap_kind == "tanh"
    shapes = {label: (count, rows, cols) for label, count, rows, cols in big.hidden_shapes}
    assert shapes == {"attn.{c_k,c_proj,c_q,c_v}": (48, 768, 768), "mlp.c_fc": (12, 3072, 768),
                      "mlp.c_proj": (12, 768, 3072)}


def test_dry_run_report_has_every_stage(dry_run):
    out, data, _ = dry_run
    assert data["state"] == "finished" and data["dry_run"] is True
    assert [s["name"] for s in data["stages"]] == STAGE_NAMES
    for s in data["stages"]:
        assert s["status"] == "done", (s["name"], s["status"], s["reason"], s["error"])
    md = (out / "report.md").read_text()
    for i, name in enumerate(STAGE_NAMES):
        assert f"## Stage {i + 1}: {name}" in md
    assert "dry run" in md


def test_dry_run_environment_and_correctness(dry_run):
    _, data, _ = dry_run
    env = _rows(data, "environment")
    assert set(env) == {"device", "versions", "import/fa3", "import/fa2", "import/fa4", "import/liger", "matmul_peak"}
    for backend in ("fa3", "fa2", "fa4"):  # no FlashAttention on a CPU: said so, with the reason
        assert env[f"import/{backend}"]["status"] == "not available" and env[f"import/{backend}"]["why_not"]
    peak = env["matmul_peak"]
    assert peak["status"] == "ok" and peak["tflops"] > 0 and peak["ms_p20"] <= peak["ms"] <= peak["ms_p80"]
    assert _stage(data, "environment")["info"]["peak_tflops"] == peak["tflops"]
    pytest_row = _rows(data, "correctness")["pytest"]
    assert pytest_row["exit_code"] == 0 and pytest_row["counts"]["passed"] > 0
    assert pytest_row["counts"]["failed"] == pytest_row["counts"]["errors"] == 0


def test_dry_run_microbench_rows(dry_run):
    _, data, checkout = dry_run
    rows = _rows(data, "microbench")
    assert set(rows) == set(_plan_keys(True))
    for key, r in rows.items():
        assert r["status"] in ("ok", "not available"), (key, r)
        if r["status"] == "ok":
            assert r["ms_p20"] <= r["ms"] <= r["ms_p80"] and r["tflops"] > 0 and r["pct_peak"] > 0, key
            assert r["speedup_vs_eager"] is None or r["speedup_vs_eager"] > 0
        else:
            assert r["reason"], key
    # every provider family ran where it can run on a CPU: eager, the interpreter, compile, torch's Muon
    for key in ("newton_schulz/124m/mlp.c_fc/eager", "newton_schulz/124m/mlp.c_fc/triton",
                "newton_schulz/124m/mlp.c_fc/compile", "newton_schulz/124m/mlp.c_fc/torch_muon",
                "linear_cross_entropy/124m/fwd+bwd/triton", "relu2_mlp/124m/backward/triton",
                "attention/124m/docs.bwd/sdpa", "attention/track3/causal.fwd/eager"):
        assert rows[key]["status"] == "ok", rows[key]
    assert rows["newton_schulz/124m/mlp.c_fc/eager"]["speedup_vs_eager"] == 1.0
    assert rows["attention/124m/causal.fwd/fa3"]["status"] == "not available"
    assert "Liger-Kernel's Triton kernels are timed on CUDA tensors only" in rows[
        "linear_cross_entropy/124m/fwd+bwd/liger"]["reason"]
    ns_modded = rows["newton_schulz/124m/mlp.c_fc/modded"]
    if checkout is None:
        assert ns_modded["status"] == "not available" and "--modded-nanogpt" in ns_modded["reason"]
    else:  # their Gram kernels run under the interpreter; their MLP and cross-entropy need a GPU, and say why
        assert ns_modded["status"] == "ok" and "modded-nanogpt" in ns_modded["note"]
        assert "get_device_properties" in rows["relu2_mlp/124m/forward/modded"]["reason"]
        assert "sm_90" in rows["linear_cross_entropy/124m/fwd+bwd/modded"]["reason"]


def test_dry_run_e2e_and_codegen(dry_run):
    _, data, _ = dry_run
    e2e = _rows(data, "e2e")
    assert set(e2e) == {"e2e/track3", "e2e/gpt2-124m"}
    run = e2e["e2e/gpt2-124m"]
    assert run["status"] == "ok" and run["steps_timed"] == 3 and run["ms_per_step"] > 0
    assert run["projection_8gpu"]["full_run_s"] == pytest.approx(run["max_steps"] * run["ms_per_step"] / 8 / 1e3)
    assert e2e["e2e/track3"]["status"] == "ok" and e2e["e2e/track3"]["published"]
    published = _stage(data, "e2e")["info"]["published"]
    assert {p["result"] for p in published} >= {"#36 tuned baseline (Muon + aux AdamW)", "#10 NorMuon"}
    codegen = _rows(data, "codegen")
    compiled = [r for r in codegen.values() if r["status"] == "ok"]
    assert compiled and all(r["aot_registers"] > 0 for r in compiled)
    assert all(r["status"] in ("ok", "skipped") for r in codegen.values())


# ---------------------------------------------------------------------------------------------------
# A run cut short: SIGTERM and SIGKILL while a stage blocks
# ---------------------------------------------------------------------------------------------------

# The environment stage runs for real; the microbench stage is replaced by one that reports a row and blocks.
BLOCKING_RUN = textwrap.dedent("""
    import sys, time
    from bench import gpu_report as g

    def blocking(ctx):
        ctx.row("block/first", "ok", ms=1.0)
        time.sleep(600)

    g.STAGES["microbench"].run = blocking
    sys.exit(g.main(sys.argv[1:]))
""")


def _start_blocking_run(out: Path):
    proc = subprocess.Popen([sys.executable, "-c", BLOCKING_RUN, "--out", str(out), "--dry-run", "--budget-s", "300",
                             "--stages", "environment,microbench,codegen"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early (exit {proc.returncode}): {proc.stdout.read()[-3000:]}")
        try:
            data = _load(out)
        except (FileNotFoundError, json.JSONDecodeError):
            data = None
        if data and "block/first" in _rows(data, "microbench"):
            return proc, _stage(data, "microbench")["pid"]
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the blocking stage never reported its row")


def test_sigterm_leaves_report_of_finished_and_interrupted_stages(tmp_path):
    proc, child = _start_blocking_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    data = _load(tmp_path)
    assert data["state"] == "interrupted" and data["interrupted_by"] == "SIGTERM"
    status = {s["name"]: s["status"] for s in data["stages"]}
    assert status == {"environment": "done", "correctness": "skipped", "microbench": "interrupted", "e2e": "skipped",
                      "codegen": "skipped"}
    assert _rows(data, "microbench")["block/first"]["status"] == "ok"  # what it measured is kept
    assert "not reached" in _stage(data, "codegen")["reason"]
    assert "not selected" in _stage(data, "correctness")["reason"]
    assert _rows(data, "environment")["matmul_peak"]["status"] == "ok"
    md = (tmp_path / "report.md").read_text()
    assert "**interrupted**" in md and "block/first" in md
    assert not _alive(child), "the stage process outlived the run"


def test_sigkill_leaves_last_written_report(tmp_path):
    proc, child = _start_blocking_run(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    data = _load(tmp_path)  # valid JSON: every write was atomic
    assert data["state"] == "running"
    status = {s["name"]: s["status"] for s in data["stages"]}
    assert status["environment"] == "done" and status["microbench"] == "running" and status["codegen"] == "pending"
    assert "block/first" in _rows(data, "microbench")
    assert "cut short" in (tmp_path / "report.md").read_text()
    deadline = time.time() + 15
    while _alive(child) and time.time() < deadline:  # PR_SET_PDEATHSIG: the stage dies with the run
        time.sleep(0.1)
    assert not _alive(child), "the stage process outlived the killed run"


def test_time_box_kills_a_stage_that_overruns(tmp_path):
    """A stage that ignores its deadline is stopped at its time box; the run goes on to the next stage."""
    script = textwrap.dedent("""
        import sys, time
        from bench import gpu_report as g

        def slow(ctx):
            ctx.row("slow/first", "ok", ms=1.0)
            time.sleep(600)

        def quick(ctx):
            ctx.row("quick/only", "ok")

        g.STAGES["microbench"].run = slow
        g.STAGES["microbench"].cap_s = 4
        g.STAGES["e2e"].run = quick
        sys.exit(g.main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, "--out", str(tmp_path), "--dry-run", "--budget-s", "120",
                           "--stages", "microbench,e2e"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = _load(tmp_path)
    micro = _stage(data, "microbench")
    assert micro["status"] == "partial" and "time box" in micro["reason"]
    assert "slow/first" in _rows(data, "microbench")
    assert _stage(data, "e2e")["status"] == "done" and "quick/only" in _rows(data, "e2e")


def test_failing_stage_is_reported_and_the_run_continues(tmp_path):
    script = textwrap.dedent("""
        import sys
        from bench import gpu_report as g

        def broken(ctx):
            ctx.row("broken/first", "ok")
            raise ValueError("deliberate failure for the test")

        def quick(ctx):
            ctx.row("quick/only", "ok")

        g.STAGES["microbench"].run = broken
        g.STAGES["e2e"].run = quick
        sys.exit(g.main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, "--out", str(tmp_path), "--dry-run", "--budget-s", "120",
                           "--stages", "microbench,e2e"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = _load(tmp_path)
    micro = _stage(data, "microbench")
    assert micro["status"] == "failed" and "deliberate failure for the test" in micro["error"]
    assert "broken/first" in _rows(data, "microbench")
    assert _stage(data, "e2e")["status"] == "done"


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _stage_obj(min_s, cap_s):
    return runner.Stage("s", "s", run=None, min_s=min_s, cap_s=cap_s, dry_min_s=min_s)


def test_time_box_reserves_for_later_stages_but_never_below_own_minimum():
    later = [_stage_obj(60, 100), _stage_obj(15, 60)]
    box, _ = runner.time_box(_stage_obj(30, 150), later, 400, dry_run=False)
    assert box == 150  # 400 - 75 reserved leaves room for the full cap
    box, _ = runner.time_box(_stage_obj(30, 150), later, 150, dry_run=False)
    assert box == 75  # the later stages keep their 75 s
    box, _ = runner.time_box(_stage_obj(30, 150), later, 50, dry_run=False)
    assert box == 30  # earlier stages have priority: the reserve shrinks, this stage's minimum does not
    box, why = runner.time_box(_stage_obj(30, 150), later, 20, dry_run=False)
    assert box is None and "needs at least 30 s" in why


def test_parse_junit_and_progress_on_a_real_pytest_run(tmp_path):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest

        def test_ok():
            pass

        def test_skip():
            pytest.skip("no reason")

        def test_bad():
            assert 1 + 1 == 3, "arithmetic is broken"
    """))
    xml = tmp_path / "out.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_sample.py", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={xml}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    counts, first = correctness.parse_junit(str(xml))
    assert counts == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1, "total": 3}
    assert "test_bad" in first and "arithmetic is broken" in first
    assert correctness.parse_progress(proc.stdout) == counts


def test_row_stream_reads_only_complete_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    stream = runner._RowStream(str(path))
    assert stream.read() == []
    path.write_text('{"row": {"key": "a"}}\n{"row": {"ke')
    assert stream.read() == [{"row": {"key": "a"}}]
    with open(path, "a") as f:
        f.write('y": "b"}}\n')
    assert stream.read() == [{"row": {"key": "b"}}]


def test_match_jit_pairs_variants_with_their_codegen_case():
    from bench import codegen

    case = next(c for c in codegen.all_cases() if c.kernel == "relu2_mm_fwd")
    pointers = {k: v for k, v in case.signature.items() if v.startswith("*")}
    jit = {"fn": case.fn.__name__, "num_warps": case.num_warps, "num_stages": case.num_stages,
           "constexprs": {**case.constexprs, "M_IS_ONE": True}, "pointer_types": pointers}  # extra JIT constexprs ok
    assert codegen_stage.match_jit(case, [jit]) == [jit]
    assert codegen_stage.match_jit(case, [{**jit, "num_warps": case.num_warps * 2}]) == []
    assert codegen_stage.match_jit(case, [{**jit, "constexprs": {**case.constexprs, "BLOCK_M": 1}}]) == []
    other_dtype = {k: "*fp32" for k in pointers}
    assert codegen_stage.match_jit(case, [{**jit, "pointer_types": other_dtype}]) == []


def test_published_track3_step_times():
    published = {p["result"]: p for p in e2e.published_track3()}
    baseline = published["#36 tuned baseline (Muon + aux AdamW)"]
    assert baseline["logs"] == 10 and baseline["gpus"] == ["NVIDIA H100 80GB HBM3"]
    assert 150 < baseline["ms_per_step_min"] <= baseline["ms_per_step_mean"] <= baseline["ms_per_step_max"] < 160
    assert all(f.startswith("records/track_3_optimization/results/") for p in published.values() for f in p["files"])


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        gr.parse_args(["--out", str(tmp_path), "--budget-s", "0"])
    with pytest.raises(SystemExit):
        gr.parse_args(["--out", str(tmp_path), "--e2e-steps", "0"])
    with pytest.raises(SystemExit, match="unknown stage"):
        gr.main(["--out", str(tmp_path), "--dry-run", "--stages", "environment,nonsense"])
    assert not os.path.exists(tmp_path / "report.json")
