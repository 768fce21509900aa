"""train.py end to end on the CPU: a few steps of the tiny preset on shards made from real text."""

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train
from data.loader import DataExhausted
from data.shards import write_shard
from kernels.device import native_bf16
from model.config import model_preset
from model.gpt import GPT
from optim.muon import muon_shape_update

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def shards(text_shards):
    return text_shards


def run(shards, tmp_path, *args):
    return train.main(["--preset=tiny", f"--data_dir={shards}", f"--out_dir={tmp_path}", "--threads=1", *args])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "muon", "normuon"])
def test_tiny_run_learns(shards, tmp_path, optimizer):
    lr = {"sgd": 0.5}.get(optimizer, 0.01)
    summary = run(shards, tmp_path, f"--optimizer={optimizer}", "--max_steps=4", "--val_every=4",
                  f"--optim.lr={lr}", "--schedule.warmup_steps=1",
                  *([f"--optim.aux_lr={lr}"] if optimizer in ("muon", "normuon") else []))
    log = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "log.jsonl"))]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0] - 0.05, vals
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 2 * 64
    assert os.path.exists(os.path.join(summary["run_dir"], "config.json"))


def test_a_run_replays_from_its_config_json_to_the_same_trajectory(shards, tmp_path):
    """--config=RUN/config.json alone (a new --out_dir: the old run is never touched) trains the same run again: every
    logged train and val loss equal, bit for bit; an override on top of it changes the trajectory."""
    first = run(shards, tmp_path / "a", "--optimizer=muon", "--max_steps=6", "--val_every=3", "--log_every=1",
                "--optim.lr=0.02", "--schedule.warmup_steps=2", "--seed=7")
    config = os.path.join(first["run_dir"], "config.json")
    replay = train.main([f"--config={config}", f"--out_dir={tmp_path / 'b'}"])
    edited = train.main([f"--config={config}", f"--out_dir={tmp_path / 'c'}", "--optim.lr=0.01"])

    def trajectory(summary):
        with open(os.path.join(summary["run_dir"], "log.jsonl")) as f:
            return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in map(json.loads, f)]

    assert len(trajectory(first)) == 6 + 3 and trajectory(replay) == trajectory(first)
    assert replay["final_val_loss"] == first["final_val_loss"] and replay["seed"] == 7
    assert trajectory(edited)[0] == trajectory(first)[0] and trajectory(edited) != trajectory(first)


def test_target_is_reported_and_stops_the_run(shards, tmp_path):
    summary = run(shards, tmp_path, "--max_steps=6", "--val_every=1", "--target_val_loss=10.7", "--optim.lr=0.01")
    assert summary["reached_target"] and summary["steps"] == summary["steps_to_target"] < 6
    assert summary["seconds_to_target"] > 0 and summary["warmup_s"] > 0
    missed = run(shards, tmp_path, "--max_steps=2", "--val_every=1", "--target_val_loss=1.0", "--run_name=miss")
    assert not missed["reached_target"] and missed["steps_to_target"] is None and missed["steps"] == 2
    assert "NOT reached" in train.format_summary(missed)


def test_speedrun_preset_runs_a_step_at_tiny_size(shards, tmp_path):
    summary = run(shards, tmp_path, "--preset=gpt2-124m", "--model.n_layer=2", "--model.n_embd=64",
                  "--model.n_head=2", "--batch_size=1", "--seq_len=32", "--max_steps=1", "--val_every=1",
                  "--val_tokens=64", "--compile=False", "--train_pattern=*_train_*.bin", "--val_pattern=*_val_*.bin")
    assert summary["steps"] == 1 and summary["optimizer"] == "muon"


def test_missing_data_is_refused_with_the_command_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.prepare"):
        train.main(["--preset=gpt2-124m", f"--data_dir={tmp_path / 'none'}", f"--out_dir={tmp_path}"])


def test_lr_schedule_is_trapezoidal():
    cfg = train.resolve(["--preset=tiny", "--max_steps=100", "--schedule.warmup_steps=10",
                         "--schedule.cooldown_frac=0.5"])
    factors = [train.lr_factor(s, cfg) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[49] == 1.0
    assert factors[75] == pytest.approx(0.5) and factors[99] == pytest.approx(0.02)
    longer = train.resolve(["--preset=tiny", "--max_steps=100", "--schedule_steps=200", "--schedule.warmup_steps=0",
                            "--schedule.cooldown_frac=0.5"])
    assert train.lr_factor(99, longer) == 1.0 and train.lr_factor(150, longer) == pytest.approx(0.5)


def test_unavailable_attention_backend_is_refused_before_training(shards, tmp_path):
    with pytest.raises(RuntimeError, match="'fa3'.*auto"):
        run(shards, tmp_path, "--attention=fa3")


# --- track 3 -------------------------------------------------------------------------------------------------


def test_track3_schedule_and_validation_cadence():
    """Track 3 (train_steps 3250): lr 1 while step/3250 < 0.3, then (1 - step/3250)/0.7; validation at step 0,
    every 125 steps while step/3250 < 0.9, every 25 after, and at the last step."""
    cfg = train.resolve(["--preset=track3"])
    expected = {0: (1.0, True), 974: (1.0, False), 975: (1.0, False), 976: ((1 - 976 / 3250) / 0.7, False),
                1000: ((1 - 1000 / 3250) / 0.7, True), 2000: ((1 - 2000 / 3250) / 0.7, True),
                2900: ((1 - 2900 / 3250) / 0.7, False), 2925: ((1 - 2925 / 3250) / 0.7, True),
                2950: ((1 - 2950 / 3250) / 0.7, True), 3249: (1 / 3250 / 0.7, False)}
    for step, (factor, validates) in expected.items():
        assert train.lr_factor(step, cfg) == pytest.approx(factor, rel=1e-12, abs=1e-15), step
        assert train.is_val_step(step, cfg) == validates, step
    assert train.is_val_step(3250, cfg)
    assert sum(train.is_val_step(s, cfg) for s in range(3251)) == len(range(0, 2925, 125)) + len(range(2925, 3251, 25))


def test_normuon_schedule_ends_50_steps_early():
    """NorMuon (#10): the schedule's horizon is 3300 steps, the run stops and is scored at step 3250."""
    cfg = train.resolve(["--preset=track3", "--optimizer=track3-normuon"])
    assert (cfg.max_steps, cfg.horizon) == (3250, 3300)
    assert train.lr_factor(989, cfg) == 1.0 and train.lr_factor(990, cfg) == pytest.approx(1.0)
    assert train.lr_factor(3249, cfg) == pytest.approx((1 - 3249 / 3300) / 0.7)  # 0.022: the lr never reaches 0
    assert train.is_val_step(2875, cfg) and not train.is_val_step(2950, cfg)  # late cadence from 2970
    assert train.is_val_step(2975, cfg) and train.is_val_step(3250, cfg) and not train.is_val_step(3249, cfg)


def _reference_loader(shards, batch: int, seq: int, rank: int, world: int):
    """modded-nanogpt's distributed_data_generator (track 3) over in-memory shards."""
    local = batch // world
    shards = iter(shards)
    tokens, pos = next(shards), 0
    while True:
        if pos + batch + 1 >= len(tokens):
            tokens, pos = next(shards), 0
        buf = torch.from_numpy(tokens[pos + rank * local :][: local + 1].astype(np.int64))
        yield buf[:-1].view(-1, seq), buf[1:].view(-1, seq)
        pos += batch


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_track3_data_windows_on_any_number_of_ranks(tmp_path, world):
    """Each rank's micro-batches are the reference loader's for that rank, step by step across shard switches
    (shard 0 holds 3 steps + 1 token: the `>=` rule leaves the third window unread), and the ranks' micro-batches
    together are the one-rank step's."""
    cfg = train.resolve(["--preset=track3", "--batch_size=2", "--seq_len=8"])  # 8 ranks × 2 rows × 8 tokens
    batch = 8 * 2 * 8
    sizes = [3 * batch + 1, 2 * batch + 5, 5 * batch + 1]
    arrays = [1000 * i + np.arange(n) % 997 for i, n in enumerate(sizes)]
    files = [tmp_path / f"t_train_{i:06d}.bin" for i in range(len(sizes))]
    for f, a in zip(files, arrays):
        write_shard(f, a)
    steps = 2 + 2 + 4  # what the reference takes from each shard before the last one runs out
    single = train.train_loader(cfg, files, rank=0, world_size=1)
    loaders = [train.train_loader(cfg, files, rank=r, world_size=world) for r in range(world)]
    references = [_reference_loader(arrays, batch, cfg.seq_len, r, world) for r in range(world)]
    for step in range(steps):
        x1, y1 = single.next_batch()
        xs, ys = [], []
        for loader, reference in zip(loaders, references):
            x, y = loader.next_batch()
            rx, ry = next(reference)
            assert torch.equal(x, rx) and torch.equal(y, ry), (step, loader.rank)
            xs += x.split(cfg.batch_size)  # the rank's micro-batches
            ys += y.split(cfg.batch_size)
        assert len(xs) == 8 and torch.equal(torch.cat(xs), x1) and torch.equal(torch.cat(ys), y1), step
    with pytest.raises(DataExhausted):
        single.next_batch()
    assert single.steps_available() == steps  # the up-front count a run checks --max_steps against


def test_track3_runs_at_tiny_size_with_a_summed_loss(shards, tmp_path, capsys):
    summary = run(shards, tmp_path, "--preset=track3", "--model.n_layer=1", "--model.n_embd=128",
                  "--model.n_head=1", "--batch_size=1", "--seq_len=32", "--max_steps=2", "--val_tokens=512",
                  "--compile=False", "--dtype=fp32", "--train_pattern=*_train_*.bin", "--val_pattern=*_val_*.bin",
                  "--log_every=1")
    assert summary["steps"] == 2 and summary["tokens"] == 2 * 8 * 32 and summary["recipe"] == "track3-muon"
    assert summary["dtype"] == "fp32" and "precision: dtype=fp32 -> fp32" in capsys.readouterr().out
    log = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "log.jsonl"))]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    losses = [r["train_loss"] for r in log if "train_loss" in r]
    uniform = math.log(50304)  # zero-initialised head: per-token loss ln V, however many tokens are summed
    assert vals[0] == pytest.approx(uniform, rel=1e-6) and losses[0] == pytest.approx(uniform, rel=1e-6)
    assert len(vals) == 2 and all(math.isfinite(v) for v in vals + losses)


@pytest.mark.parametrize("dtype, bf16_embedding", [("fp32", False), ("bf16", False), ("bf16", True),
                                                   ("auto", True)])
def test_dtype_resolves_to_autocast_or_bf16_activations(shards, tmp_path, dtype, bf16_embedding):
    cfg = train.resolve(["--preset=tiny", f"--data_dir={shards}", f"--out_dir={tmp_path}", f"--dtype={dtype}",
                         f"--model.bf16_embedding={bf16_embedding}", "--model.vocab_size=50304"])
    trainer = train.Trainer(cfg)
    low = dtype == "bf16" or (dtype == "auto" and native_bf16("cpu"))
    assert trainer.dtype == (torch.bfloat16 if low else torch.float32)
    assert trainer.autocast == (low and not bf16_embedding)
    assert trainer.model.wte.weight.dtype == (torch.bfloat16 if low and bf16_embedding else torch.float32)
    assert trainer.precision.startswith("fp32" if not low else "bf16")


def test_summed_loss_gradient_is_tokens_times_the_mean_gradient(shards, tmp_path):
    """With 2 micro-batches a step the summed-loss trainer's gradient is the gradient of the step's total loss:
    tokens × the mean-loss trainer's gradient (which averages the micro-batches); same reported loss per token."""
    grads, losses = {}, {}
    for reduction in ("mean", "sum"):
        cfg = train.resolve(["--preset=tiny", f"--data_dir={shards}", f"--out_dir={tmp_path}", "--dtype=fp32",
                             "--reference_world_size=2", f"--model.loss_reduction={reduction}", "--optim.lr=1e-9",
                             "--grad_clip=0"])
        trainer = train.Trainer(cfg)
        with torch.no_grad():  # away from the zero-initialised head, so that every gradient is non-zero
            for i, p in enumerate(trainer.model.parameters()):
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        trainer.optimizer.zero_grad = lambda set_to_none=True: None  # keep the gradients for the comparison
        losses[reduction] = trainer.train_step(0).item()  # the loss per token stays on the device
        grads[reduction] = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    tokens = 2 * 2 * 64
    assert losses["sum"] == pytest.approx(losses["mean"], rel=1e-6)
    for name, g in grads["mean"].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads["sum"][name], tokens * g, rtol=1e-5, atol=1e-6 * tokens * g.abs().max(),
                                   msg=name)


def test_freed_memory_is_reused_without_page_faults():
    """After keep_freed_memory (every CPU Trainer calls it), training steps whose logits exceed glibc's 32 MB mmap
    threshold stop page-faulting: 256 tokens × 50304 fp32 logits are 51 MB (12,576 pages), and by default every
    step maps and zeroes such blocks anew (faulting several times that). With it, the typical (median) step after
    two warm-up steps faults less than a quarter of one logits tensor's pages; the heap may still grow now and
    then, which the median ignores."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"keep_freed_memory tunes glibc's malloc; this C library is {platform.libc_ver()[0] or 'unknown'}")
    train.keep_freed_memory()
    model = GPT(model_preset("tiny", max_seq_len=256))
    idx = torch.randint(0, 50304, (1, 256))
    logits_pages = 256 * 50304 * 4 // 4096
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(idx, idx).backward()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert statistics.median(faults[2:]) < logits_pages // 4, faults


def test_summed_loss_on_two_ranks_matches_one_rank(shards, tmp_path):
    """Track 3's summed loss under data parallelism (gloo, 2 processes, sharded Muon): the same losses and
    weights as one process accumulating the same 2 micro-batches. Each rank backpropagates 2 × its sum and
    DataParallel halves the sum of the ranks' gradients, both exact, so the figures agree to rounding."""
    common = ["--preset=track3", f"--data_dir={shards}", "--train_pattern=*_train_*.bin", "--val_pattern=*_val_*.bin",
              "--model.n_layer=1", "--model.n_embd=128", "--model.n_head=1", "--model.vocab_size=50304",
              "--batch_size=1", "--seq_len=32", "--reference_world_size=2", "--max_steps=3", "--val_tokens=256",
              "--val_every=3", "--compile=False", "--dtype=fp32", "--threads=1", "--run_name=r",
              "--checkpoint_every=3"]  # the final checkpoint holds the weights compared below
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "train.py", *common,
                           f"--out_dir={tmp_path / 'two'}"], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    one = train.main([*common, f"--out_dir={tmp_path / 'one'}"])
    logs = [[json.loads(line) for line in open(tmp_path / d / "r" / "log.jsonl")] for d in ("one", "two")]
    for a, b in zip(*logs):
        assert a["step"] == b["step"] and a.keys() == b.keys()
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6), (a, b)
    weights = [torch.load(tmp_path / d / "r" / "checkpoint.pt", weights_only=False)["model"] for d in ("one", "two")]
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    assert one["steps"] == 3


# --- host syncs ----------------------------------------------------------------------------------------------


def _assert_syncs_only_at_boundaries(events, boundaries, max_steps):
    """events: [((trainer.step, phase), what)]. No train_step waits for the device; the loop waits only at a
    boundary (the step count right after a boundary step, or 0: warm-up, first validation); and every boundary
    does wait (the clock's synchronize and the one read), so the counter demonstrably sees the trainer's syncs."""
    assert not [e for e in events if e[0][1] == "train_step"], [e for e in events if e[0][1] == "train_step"][:5]
    per_step = {s: [what for (step, _), what in events if step == s] for s in range(max_steps + 1)}
    quiet = [s for s in range(1, max_steps + 1) if s not in boundaries]
    assert quiet and {s: per_step[s] for s in quiet} == {s: [] for s in quiet}
    for s in boundaries:
        assert "torch.cpu.synchronize" in per_step[s] and "Tensor.tolist" in per_step[s], (s, per_step[s])


# boundaries: log every 5 steps, validation every 8, a checkpoint every 7, the last step (16)
SYNC_ARGS = ["--max_steps=16", "--log_every=5", "--val_every=8", "--checkpoint_every=7", "--grad_clip=1.0",
             "--dtype=fp32"]


@pytest.mark.parametrize("grad_accum", [1, 2])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_no_host_sync_between_boundaries(shards, tmp_path, optimizer, grad_accum):
    """A CUDA-free run counted by tests/host_syncs.py: no training step waits for the device (item, bool, float,
    tolist, numpy, synchronize, data-dependent shapes, ...); the loop reads the device only at the boundaries."""
    from tests.host_syncs import HostSyncs, trainer_syncs

    cfg = train.resolve(["--preset=tiny", f"--data_dir={shards}", f"--out_dir={tmp_path}", "--threads=1",
                         f"--optimizer={optimizer}", f"--grad_accum={grad_accum}", *SYNC_ARGS])
    trainer = train.Trainer(cfg)
    assert trainer.accum == grad_accum and cfg.grad_clip
    with trainer_syncs(trainer) as syncs:
        summary = trainer.run()
    boundaries = [s for s in range(1, cfg.max_steps + 1) if trainer.is_boundary(s)]
    assert boundaries == [5, 7, 8, 10, 14, 15, 16] and summary["steps"] == 16
    _assert_syncs_only_at_boundaries(syncs.events, boundaries, cfg.max_steps)
    log = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "log.jsonl"))]
    train_records = [(r["step"], r["interval_steps"]) for r in log if "train_loss" in r]
    assert train_records == [(5, 5), (7, 2), (8, 1), (10, 2), (14, 4), (15, 1), (16, 1)]
    with HostSyncs(trainer.device) as checked:  # the replay's checked step does read the device
        trainer.train_step(trainer.step, checked=True)
    assert any(what == "Tensor.item" for _, what in checked.events)


def test_no_host_sync_between_boundaries_on_two_gloo_ranks(shards, tmp_path):
    """The same count on every rank of a 2-process gloo job: sharded Muon (reduce-scatter, all-gather), the
    Adam side's bucketed all-reduce, 2 micro-batches a rank, clipping on."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = ["--preset=tiny", f"--data_dir={shards}", f"--out_dir={tmp_path}", "--threads=1", "--optimizer=muon",
            "--reference_world_size=2", "--grad_accum=2", *SYNC_ARGS]
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "tests.host_syncs", str(tmp_path),
                           *args], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for rank in range(2):
        report = json.load(open(tmp_path / f"syncs_rank{rank}.json"))
        events = [((step, phase), what) for (step, phase), what in report["events"]]
        boundaries = [s for s in report["boundaries"] if s > 0]
        assert boundaries == [5, 7, 8, 10, 14, 15, 16]
        _assert_syncs_only_at_boundaries(events, boundaries, report["max_steps"])
        assert report["accum"] == 2 and report["world_size"] == 2


# --- implementations resolved at start; the clock --------------------------------------------------------------


def test_resolved_implementations_are_printed_recorded_and_used(shards, tmp_path, capsys):
    from kernels import registry

    args = ["--optimizer=muon", "--model.relu2_mlp_impl=auto", "--model.linear_cross_entropy_impl=auto",
            "--optim.newton_schulz_impl=auto",
            "--attention=auto", "--max_steps=1"]
    summary = run(shards, tmp_path, *args)
    expected = {"attention": "sdpa", "mlp": "eager", "ce": "chunked", "ns": "eager", "compile": "off"}
    assert summary["implementations"] == expected
    assert "implementations: attention sdpa, mlp eager, ce chunked, ns eager, compile off" in capsys.readouterr().out
    config = json.load(open(os.path.join(summary["run_dir"], "config.json")))
    assert (config["model"]["relu2_mlp_impl"], config["model"]["linear_cross_entropy_impl"],
            config["model"]["attention_impl"]) == \
        ("eager", "chunked", "sdpa")
    assert (config["optim"]["newton_schulz_impl"], config["compile"], config["device"]) == ("eager", "off", "cpu")
    assert config["dtype"] in ("bf16", "fp32") and config["optim"]["ns_dtype"] in ("bf16", "fp32")
    trainer = train.Trainer(train.resolve(["--preset=tiny", f"--data_dir={shards}", *args]))
    assert trainer.requested.model.relu2_mlp_impl == "auto" and trainer.step_model is trainer.model  # no compile
    assert trainer.model.blocks[0].mlp.relu2 is registry.get("relu2_mlp", "eager")
    assert trainer.model.cross_entropy is registry.get("linear_cross_entropy", "chunked")
    assert trainer.model.blocks[0].attn.attend is registry.get("attention", "sdpa")
    assert "ns" not in train.Trainer(train.resolve(["--preset=tiny", f"--data_dir={shards}"])).implementations


def test_compile_on_compiles_the_whole_graph(shards, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append((fn, kwargs)) or fn)
    trainer = train.Trainer(train.resolve(["--preset=tiny", f"--data_dir={shards}", "--compile=fullgraph"]))
    assert calls == [(trainer.model, {"fullgraph": True})]  # AdamW: torch's own step
    for optimizer in ("muon", "normuon"):  # and Muon/NorMuon's per-shape update (tests/optim/test_muon.py)
        calls.clear()
        trainer = train.Trainer(train.resolve(["--preset=tiny", f"--data_dir={shards}", "--compile=fullgraph",
                                               f"--optimizer={optimizer}"]))
        assert calls == [(trainer.model, {"fullgraph": True}),
                         (muon_shape_update, {"fullgraph": True, "dynamic": False, "backend": "inductor"})]
    calls.clear()
    trainer = train.Trainer(train.resolve(["--preset=tiny", f"--data_dir={shards}", "--compile=off",
                                           "--optimizer=muon"]))
    assert calls == [] and trainer.optimizer._shape_update is muon_shape_update


def test_the_clock_counts_training_steps_only(shards, tmp_path):
    """The clock runs from one boundary to the next: the steps are timed, validation and checkpoints are not.
    Each evaluate and save is slowed by 0.3 s; train_time must hold the steps' own time and no such pause."""
    cfg = train.resolve(["--preset=tiny", f"--data_dir={shards}", f"--out_dir={tmp_path}", "--threads=1",
                         "--max_steps=6", "--log_every=3", "--val_every=2", "--checkpoint_every=3"])
    trainer = train.Trainer(cfg)
    step_s, train_step, evaluate, save = [], trainer.train_step, trainer.evaluate, trainer.save_checkpoint

    def timed_step(step, **kwargs):
        start = time.perf_counter()
        out = train_step(step, **kwargs)
        step_s.append(time.perf_counter() - start)
        return out

    def slow(fn):
        def wrapper():
            time.sleep(0.3)
            return fn()
        return wrapper

    trainer.train_step, trainer.evaluate, trainer.save_checkpoint = timed_step, slow(evaluate), slow(save)
    summary = trainer.run()
    steps = sum(step_s[1:])  # without the warm-up step
    assert steps <= summary["train_time_s"] < steps + 0.2, (steps, summary["train_time_s"])
    log = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "log.jsonl"))]
    last_train = [r for r in log if "train_loss" in r][-1]
    assert last_train["step"] == 6 and last_train["step_avg_ms"] == pytest.approx(1e3 * summary["train_time_s"] / 6)


@pytest.mark.gpu
def test_no_synchronizing_cuda_op_inside_a_training_step(shards, tmp_path):
    """On a GPU, torch's sync debug mode turns every synchronizing CUDA op (item, a blocking copy to the host,
    nonzero, ...) inside train_step into an error, with the implementations the GPU presets resolve to."""
    cfg = train.resolve(["--preset=tiny", f"--data_dir={shards}", f"--out_dir={tmp_path}", "--device=cuda",
                         "--optimizer=muon", "--model.relu2_mlp_impl=auto", "--model.linear_cross_entropy_impl=auto",
                         "--optim.newton_schulz_impl=auto",
                         "--attention=auto", "--compile=off", "--grad_accum=2", *SYNC_ARGS])
    trainer = train.Trainer(cfg)
    train_step = trainer.train_step

    def strict_step(step, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return train_step(step, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer.train_step = strict_step
    assert trainer.run()["steps"] == cfg.max_steps
