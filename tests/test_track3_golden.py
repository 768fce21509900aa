"""Parity with modded-nanogpt's track-3 reference, records/track_3_optimization/train_gpt_simple.py.

The figures in tests/golden/track3_train_gpt_simple.json are the unedited output of

    # KellerJordan/modded-nanogpt at commit f411b3d346aa52d3504324ca93c230fd84c6c07f (the file's git blob e723a6bb)
    git -C modded-nanogpt show f411b3d:records/track_3_optimization/train_gpt_simple.py > train_gpt_simple.py
    python scripts/track3_golden.py --reference train_gpt_simple.py > tests/golden/track3_train_gpt_simple.json

run with torch 2.13.0+cpu and Python 3.11.7 on one thread of an x86_64 CPU with AVX-512 and AMX bf16 (torch
capability AVX512; an Intel Xeon). scripts/track3_golden.py runs the reference's own model and optimizer
definitions at 2 layers, d=256 (2 heads of 128), 2 rows of 64 tokens, vocab 50304, fp32 (its bf16 embedding
converted to fp32; its Newton-Schulz stays bf16), eagerly (torch.compile replaced by the identity), and records:
every parameter's init after seeding the RNG with 1234, the loss and every gradient at a perturbed state (init +
seeded noise), and 5 steps of its Muon + AdamW with the baseline's hyperparameters on seeded token streams
(losses, every parameter's norm after each step, val loss before and after), once as written and once with its
bf16 GEMMs summed in another order (the peer).

Here our "track3" model at that size, in fp32, must reproduce those figures: the same init from the same seed
(our track3 init draws in the reference's parameter order); the loss and every gradient within 1e-5 relative.
A gradient is compared by its norm and by a probe <g, r> with the same seeded r: |Δ<g, r>| <= 1e-5·|g|·|r| is
what "g within 1e-5 relative" implies (Cauchy-Schwarz), and a permuted or sign-flipped gradient fails it.
Then the trainer with the baseline recipe runs the 5 steps: within 1e-5 up to the first Newton-Schulz of a
non-zero momentum, and within the measured arithmetic drift after it (see DRIFT_RTOL); on the recording machine
with one thread every figure is bitwise equal to the reference's.
"""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from data.shards import write_shard
from model.config import model_preset
from model.gpt import GPT
from speedrun.config import resolve

GOLDEN = json.loads((Path(__file__).parent / "golden" / "track3_train_gpt_simple.json").read_text())
META = GOLDEN["meta"]
RTOL = 1e-5


def our_name(ref: str) -> str:
    """The reference's parameter name -> ours."""
    top = {"embed.weight": "wte.weight", "proj.weight": "lm_head.weight", "proj.bias": "lm_head.bias",
           "norm1.gains": "norm_in.gain", "norm2.gains": "norm_f.gain"}
    if ref in top:
        return top[ref]
    name = re.sub(r"attn\.(q|k|v|proj)\.", r"attn.c_\1.", ref)
    name = re.sub(r"mlp\.(fc|proj)\.", r"mlp.c_\1.", name)
    return name.replace(".gains", ".gain")


def tiny_track3(linear_cross_entropy_impl: str = "eager") -> GPT:
    shape = META["shape"]
    cfg = model_preset("track3", n_layer=shape["n_layer"], n_embd=shape["dim"], n_head=shape["dim"] // 128,
                       vocab_size=shape["vocab"], max_seq_len=shape["seq"],
                       linear_cross_entropy_impl=linear_cross_entropy_impl)
    model = GPT(cfg)  # fp32: the bf16 embedding is bf16 only in a bf16 run
    torch.manual_seed(META["init_seed"])
    model.reset_parameters()
    return model


def streams() -> tuple[torch.Tensor, torch.Tensor]:
    """The golden script's train and val token streams."""
    g = torch.Generator()
    train = torch.randint(0, META["data_vocab"], (META["train_tokens"],), generator=g.manual_seed(META["train_seed"]))
    val = torch.randint(0, META["data_vocab"], (2 * META["val_tokens"] + 1,), generator=g.manual_seed(META["val_seed"]))
    return train, val


def first_batch() -> tuple[torch.Tensor, torch.Tensor]:
    rows, seq = META["shape"]["rows"], META["shape"]["seq"]
    buf = streams()[0][: rows * seq + 1]
    return buf[:-1].view(rows, seq), buf[1:].view(rows, seq)


def test_parameters_correspond_one_to_one():
    model = tiny_track3()
    assert sorted(our_name(n) for n in GOLDEN["init"]) == sorted(n for n, _ in model.named_parameters())
    assert [n for n, _ in model._track3_order()] == [our_name(n) for n in GOLDEN["init"]]  # the reference's order


def test_init_draws_the_reference_numbers():
    params = dict(tiny_track3().named_parameters())
    for ref, want in GOLDEN["init"].items():
        p = params[our_name(ref)].detach().double().flatten()
        got = {"norm": p.norm().item(), "sum": p.sum().item(), "first": p[:2].tolist(), "last": p[-2:].tolist()}
        assert got["first"] == pytest.approx(want["first"], rel=1e-6, abs=1e-12), ref
        assert got["last"] == pytest.approx(want["last"], rel=1e-6, abs=1e-12), ref
        assert got["norm"] == pytest.approx(want["norm"], rel=1e-9, abs=1e-12), ref
        assert got["sum"] == pytest.approx(want["sum"], rel=1e-9, abs=1e-9 * max(want["norm"], 1.0)), ref


@pytest.mark.parametrize("linear_cross_entropy_impl", ["eager", "chunked"])
def test_loss_and_every_gradient_match_the_reference(linear_cross_entropy_impl):
    """The reference's formulation (eager) and the CPU's default loss (chunked) alike."""
    model = tiny_track3(linear_cross_entropy_impl)
    params = dict(model.named_parameters())
    with torch.no_grad():  # the golden script's perturbation: parameter i of the reference's order, seed i
        for i, ref in enumerate(GOLDEN["init"]):
            p = params[our_name(ref)]
            p.add_(META["perturb_std"] * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    x, y = first_batch()
    loss = model(x, y)
    loss.backward()
    want = GOLDEN["perturbed"]
    assert loss.item() == pytest.approx(want["loss"], rel=RTOL)
    for i, (ref, grad) in enumerate(want["grads"].items()):
        g = params[our_name(ref)].grad.double()
        r = torch.randn(g.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        assert g.norm().item() == pytest.approx(grad["norm"], rel=RTOL), ref
        assert abs((g * r).sum().item() - grad["probe"]) <= RTOL * grad["norm"] * r.norm().item(), ref


def test_the_reference_loss_is_a_sum_at_uniform_init():
    """At init the head is zero: every logit is 0 and the summed loss is rows·seq·ln(V), here and there."""
    model = tiny_track3()
    x, y = first_batch()
    expected = x.numel() * torch.log(torch.tensor(float(META["shape"]["vocab"]), dtype=torch.float64)).item()
    assert model(x, y).item() == pytest.approx(expected, rel=1e-6)
    assert GOLDEN["steps"][0]["loss"] == pytest.approx(expected, rel=1e-6)


# After the first Newton-Schulz of a non-zero momentum (step 1) the trajectory depends on the last bits of the
# arithmetic: AdamW with eps 1e-10 turns gradient entries that are zero up to rounding (the attention biases',
# nearly shift-invariant under the softmax and QK-norm) into ±lr steps, and the bf16 Newton-Schulz rounds its
# products to 8 bits. The figures are bitwise equal to the reference's where the arithmetic is the recording's
# (this AVX-512/AMX CPU, 1 thread); elsewhere they differ by up to (worst over AVX-512 with AMX, 1 and 2 threads;
# AVX-512 without bf16; AVX2, 1 and 2 threads; no SIMD): losses 2.8e-5, embedding/head/outer gains 1.1e-5,
# randomly initialised block matrices 2.2e-4, zero-initialised ones (attention and MLP proj) 1.7e-3, block
# biases and gains 5.6e-3. The reference against itself with its bf16 GEMMs summed in another order (the
# golden's steps_emulated_bf16) drifts as far: 8.8e-6, 1.8e-6, 1.8e-4, 1.1e-3, 5.2e-3. Tolerances: ~4x those.
DRIFT_RTOL = {"loss": 1e-4, "outer": 5e-5, "matrix": 1e-3, "zero_init_matrix": 5e-3, "block_1d": 2e-2}


def drift_class(ref: str) -> str:
    if not ref.startswith("blocks."):
        return "outer"
    if not ref.endswith("weight"):
        return "block_1d"
    return "zero_init_matrix" if ref.endswith("proj.weight") else "matrix"


def check_trajectory(losses, norms, val_after, want_steps, want_val_after):
    """losses[k] per token before step k, norms[k] after step k (our names), against the golden's records:
    1e-5 up to the first Newton-Schulz of a non-zero momentum, DRIFT_RTOL after."""
    tokens = META["shape"]["rows"] * META["shape"]["seq"]
    for k, want in enumerate(want_steps):
        assert losses[k] == pytest.approx(want["loss"] / tokens, rel=RTOL if k <= 1 else DRIFT_RTOL["loss"]), k
        for ref, norm in want["norms"].items():
            rtol = RTOL if k == 0 else DRIFT_RTOL[drift_class(ref)]
            assert norms[k][our_name(ref)] == pytest.approx(norm, rel=rtol, abs=1e-12), (k, ref)
    assert val_after == pytest.approx(want_val_after, rel=DRIFT_RTOL["loss"])


def test_the_drift_tolerances_admit_the_reference_against_itself():
    peer = GOLDEN["steps_emulated_bf16"]
    tokens = META["shape"]["rows"] * META["shape"]["seq"]
    norms = [{our_name(r): v for r, v in s["norms"].items()} for s in peer]
    check_trajectory([s["loss"] / tokens for s in peer], norms, GOLDEN["val_loss_after_emulated_bf16"],
                     GOLDEN["steps"], GOLDEN["val_loss_after"])


def test_five_steps_of_the_baseline_recipe_match_the_reference(tmp_path):
    """The trainer (track3 preset, its baseline recipe, fp32, 1 thread) over shards holding the golden streams:
    the summed losses (reported per token), every parameter's norm after each step, and the val loss before and
    after, with the schedule's horizon at the run's 5 steps as in the golden script."""
    train_stream, val_stream = streams()
    write_shard(tmp_path / "g_train_000000.bin", train_stream.numpy())
    write_shard(tmp_path / "g_val_000000.bin", val_stream.numpy())
    shape = META["shape"]
    cfg = resolve(["--preset=track3", f"--data_dir={tmp_path}", "--train_pattern=g_train_*.bin",
                   "--val_pattern=g_val_*.bin", f"--out_dir={tmp_path / 'runs'}", f"--model.n_layer={shape['n_layer']}",
                   f"--model.n_embd={shape['dim']}", f"--model.n_head={shape['dim'] // 128}",
                   f"--model.max_seq_len={shape['seq']}", f"--batch_size={shape['rows']}", f"--seq_len={shape['seq']}",
                   "--reference_world_size=1", f"--max_steps={META['horizon']}", f"--val_tokens={META['val_tokens']}",
                   f"--val_every={META['horizon']}", "--dtype=fp32", "--compile=False", "--threads=1",
                   "--log_every=1",  # a train record (the loss) every step
                   # The reference's loss formulation: the CPU's default (chunked) sums in another order, within
                   # 1e-5 of it (test above), and AdamW's eps 1e-10 turns that into drift beyond the bitwise check.
                   "--model.linear_cross_entropy_impl=eager"])
    assert cfg.optim.ns_dtype == "bf16"  # as the reference: the recipe asks for bf16 (emulated where not native)
    trainer = train.Trainer(cfg)
    torch.manual_seed(META["init_seed"])
    trainer.model.reset_parameters()  # the golden init: the generator seeded right before the init rule
    norms, step = [], trainer.parallel.step

    def step_and_record():
        step()
        norms.append({n: p.detach().double().norm().item() for n, p in trainer.model.named_parameters()})

    trainer.parallel.step = step_and_record
    summary = trainer.run()
    log = [json.loads(line) for line in open(Path(summary["run_dir"]) / "log.jsonl")]
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(norms) == META["horizon"] + 1 and len(vals) == 2  # the warm-up step (undone), then the 5 steps
    assert [train.lr_factor(k, cfg) for k in range(5)] == pytest.approx([s["lr_factor"] for s in GOLDEN["steps"]],
                                                                         rel=1e-12)
    assert vals[0] == pytest.approx(GOLDEN["val_loss_before"], rel=RTOL)
    check_trajectory(losses, norms[1:], vals[1], GOLDEN["steps"], GOLDEN["val_loss_after"])


# ---- the harness and the goldens of other track-3 results -------------------------------------------------------
# scripts/track3_golden.py runs any result's own script (its loop, optimizers, schedules, init, wrappers) at the tiny
# size; tests/golden/<folder>.json are its output for these results (folder -> the track README's result number).
# They are the reference for implementations of those optimizers: the init fingerprints, the loss and gradients at a
# perturbed state, every parameter's norm after each step, the validation passes, and the same run again as a peer
# (bf16 GEMMs emulated; for fp32-only optimizers 2 threads and the CPU's SIMD kernels off) whose distance
# (self_drift) bounds a fair tolerance.
HARNESS = Path(__file__).parents[1] / "scripts" / "track3_golden.py"
RESULT_GOLDENS = {
    "20260430_adamh": 4, "20260430_muonh": 5, "20260501_muonsq": 7, "20260430_normuonh": 8,
    "20260504_muloco_normuonh": 13, "20260513_shampoo_1_4_power": 21, "20260517_ortho": 22, "20260518_soaph": 27,
    "20260527_psgd": 33, "20260611_muonh_tuned_aux_3250": 37, "20260522_ema_nesterov_muon": 39,
    "20260619_cwd_rowfloor_tailema": 46,
}


def harness(name: str):
    """scripts/track3_harness/<name>.py, imported as scripts/track3_golden.py imports it (its folder on sys.path)."""
    if str(HARNESS.parent) not in sys.path:
        sys.path.insert(0, str(HARNESS.parent))
    return importlib.import_module(f"track3_harness.{name}")


RESULT_FILES = sorted(p.name for p in (Path(__file__).parent / "golden").glob("2026*.json"))


def test_every_listed_result_has_a_golden():
    assert {f"{folder}.json" for folder in RESULT_GOLDENS} <= set(RESULT_FILES)


@pytest.mark.parametrize("file", RESULT_FILES)
def test_a_result_golden_records_its_run_and_its_peer(file):
    """<folder>.json runs the folder's .py (else its log's script); <folder>.log.json, where present, the published
    runs' log script where it differs from the .py."""
    golden = json.loads((Path(__file__).parent / "golden" / file).read_text())
    meta, steps = golden["meta"], golden["steps"]
    folder = file.split(".")[0]
    assert (meta["result"], meta["folder"]) == (RESULT_GOLDENS[folder], folder)
    if file.endswith(".log.json"):
        assert meta["source"] == "log"
    assert meta["commit"] == "f411b3d346aa52d3504324ca93c230fd84c6c07f" and meta["published"]["steps"] > 0
    assert (Path(__file__).parents[1] / meta["adapter"]).is_file()
    names = set(golden["init"])
    assert len(steps) == meta["steps"] and all(set(s["norms"]) == names for s in steps)
    assert set(golden["perturbed"]["grads"]) == names
    assert sorted(p for g in golden["param_groups"] if not g["optimizer"].startswith("EMA_Nesterov")
                  for p in g["params"]) == sorted(names)  # every parameter has exactly one optimizer role
    finals = [p for p in golden["val_passes"] if p["after_steps"] == meta["steps"]]
    assert finals and finals[0]["loss"] == golden["val_loss_after"]
    drift = golden["self_drift"]
    assert drift["peers"] == (["bf16"] if meta["bf16_matmuls_per_run"] else ["threads", "nosimd"])
    assert drift["norms_max"] > 0  # a peer that moves nothing states no tolerance

    def within(a, b, rtol):  # self_drift's definition: |a - b| / max(|a|, |b|)
        return abs(a - b) <= rtol * max(abs(a), abs(b)) * (1 + 1e-12)
    for kind in drift["peers"]:
        peer = {"bf16": "_emulated_bf16", "threads": "_threads2", "nosimd": "_nosimd"}[kind]
        assert len(golden["steps" + peer]) == len(steps) and golden["val_loss_after" + peer] > 0
        if kind == "bf16":  # the first forward precedes any bf16 GEMM
            assert steps[0]["loss"] == golden["steps" + peer][0]["loss"]
        for k, (a, b) in enumerate(zip(steps, golden["steps" + peer])):
            assert within(a["loss"], b["loss"], drift["loss"]), (kind, k)
            for name in names:
                assert within(a["norms"][name], b["norms"][name], drift["norms"][name]), (kind, k, name)


def test_the_harness_reads_a_log_script_and_rewrites_its_constants():
    source, adapt = harness("source"), harness("adapt")
    log = ("train_steps = 3250\nfor _ in range(1):\n    h_warmup = 250\n"
           "def loader(pattern, batch_size, seq_len=1024):\n    train_steps = 7\n    return seq_len\n"
           "model = GPT(vocab_size=50304, num_layers=12)\n" + "=" * 100 + "\nstep:0/3250 val_loss:10.8\n")
    text = source.script_from_log(log)
    assert text.endswith("GPT(vocab_size=50304, num_layers=12)\n")
    code, applied = adapt.rewrite(text, "script.py", {"train_steps": 5, "h_warmup": 2}, {"GPT": {"num_layers": 2}},
                                  {"loader": {"seq_len": 64}}, set())
    namespace = {"GPT": lambda **kwargs: kwargs}
    exec(code, namespace)
    assert namespace["train_steps"] == 5 and namespace["h_warmup"] == 2  # module level and inside a loop
    assert namespace["loader"]("x", 1) == 64  # a default; the assignment inside the function is left alone
    assert namespace["model"] == {"vocab_size": 50304, "num_layers": 2}
    assert {(a["name"], a["was"], a["line"]) for a in applied} >= {("train_steps", "3250", 1), ("h_warmup", "250", 3)}
    with pytest.raises(SystemExit, match="nothing to rewrite for mbs"):
        adapt.rewrite(text, "script.py", {"mbs": 2}, {}, {}, set())


@pytest.mark.slow
def test_the_harness_regenerates_the_baseline_golden_within_the_drift():
    """The harness on the reference script itself (about 5 minutes on 2 cores): bit for bit on the recording
    machine; here within the arithmetic drift the tolerances above state. Needs a modded-nanogpt checkout (a git
    directory, bare or not, holding commit f411b3d) named by the MODDED_NANOGPT environment variable."""
    checkout = os.environ.get("MODDED_NANOGPT")
    if not checkout:
        pytest.skip("set MODDED_NANOGPT to a modded-nanogpt checkout")
    out = subprocess.run([sys.executable, str(HARNESS), "--result", "train_gpt_simple", "--checkout", checkout,
                          "--commit", "f411b3d"], capture_output=True, text=True, check=True)
    new = json.loads(out.stdout)
    assert new["meta"]["reference_git_blob"] == META["reference_git_blob"]
    assert new["init"] == GOLDEN["init"]
    assert new["perturbed"]["loss"] == pytest.approx(GOLDEN["perturbed"]["loss"], rel=RTOL)
    for name, grad in GOLDEN["perturbed"]["grads"].items():
        assert new["perturbed"]["grads"][name]["norm"] == pytest.approx(grad["norm"], rel=RTOL), name
    assert new["val_loss_before"] == pytest.approx(GOLDEN["val_loss_before"], rel=RTOL)
    tokens = META["shape"]["rows"] * META["shape"]["seq"]
    for key in ("", "_emulated_bf16"):
        steps = new["steps" + key]
        norms = [{our_name(r): v for r, v in s["norms"].items()} for s in steps]
        check_trajectory([s["loss"] / tokens for s in steps], norms, new["val_loss_after" + key], GOLDEN["steps"],
                         GOLDEN["val_loss_after"])
