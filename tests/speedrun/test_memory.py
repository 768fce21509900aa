"""memory.py: the traced peak of a training step against what a real step holds, and the tracker itself."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from speedrun.config import resolve
from speedrun.memory import LiveBytes, StepDoesNotFit, check_fit, estimate_step_memory, margin_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs one real warm-up step (it allocates the optimizer state), resets the kernel's peak-RSS counter (VmHWM,
# through /proc/self/clear_refs) and runs a second step: the rise of the peak over the RSS before it is what
# the step needed on top of what persists (parameters, optimizer state). CPU tensors are malloc'd and freed
# back at once (large blocks are mmap'd), so RSS follows the live bytes closely.
PROBE = textwrap.dedent("""
    import json, os, sys
    import torch
    from speedrun.config import resolve
    from model.gpt import GPT
    from optim import build_optimizer

    torch.set_num_threads(1)
    cfg = resolve(sys.argv[1:])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    optimizer = build_optimizer(cfg.optim, model)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.batch_size, cfg.seq_len))

    def step():
        for _ in range(cfg.grad_accum):
            model(x, x).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    step()
    before = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    print(json.dumps({"step_bytes": peak - before}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_estimate_matches_a_real_cpu_step_within_ten_percent(optimizer):
    # fp32, eager ops, a vocab-sized head: ~1.6 GB of activations, so the process's own ~0.7 GB is not what moves.
    args = ["--preset=cpu", "--dtype=fp32", f"--optimizer={optimizer}", "--model.n_layer=2", "--batch_size=8",
            "--seq_len=256", "--model.attention_impl=sdpa", "--grad_accum=2"]
    est = estimate_step_memory(resolve(args), device_type="cpu")
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["step_bytes"]
    estimated = est.peak_bytes - est.params_bytes - est.optimizer_bytes  # what the step adds to what persists
    assert abs(estimated - measured) <= 0.10 * measured, (estimated, measured, str(est))


def test_live_bytes_counts_storages_once_and_frees():
    live = LiveBytes()
    with live:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[10:20]  # same storage: not counted again
        b = a * 2  # 4000 more
        assert live.current == 8000 and view.numel() == 10
        del b
        assert live.current == 4000
        c = torch.zeros(500, dtype=torch.float64)  # 4000
    assert live.peak == 8000 and live.current == 8000
    del a, view, c


def test_estimate_parts_of_a_known_model():
    """Parameters, gradients and AdamW's state (two moments per parameter and a 0-dim fp32 step count) of the cpu
    preset are exact byte counts."""
    from model.gpt import GPT

    cfg = resolve(["--preset=cpu", "--dtype=fp32", "--optimizer=adamw"])
    est = estimate_step_memory(cfg, device_type="cpu")
    params = list(GPT(cfg.model).parameters())
    n = sum(p.numel() for p in params)
    assert est.params_bytes == est.grads_bytes == 4 * n
    assert est.optimizer_bytes == 2 * 4 * n + 4 * len(params)
    assert est.peak_bytes > est.params_bytes + est.grads_bytes + est.optimizer_bytes


@pytest.mark.parametrize("optimizer", ["track3-shampoo", "track3-soaph"])
def test_kronecker_optimizer_state_is_traced_exactly(optimizer):
    """Shampoo's and SOAP's steps trace on fake tensors (their step counts and step factors live on the host, not
    in tensors a fake trace cannot read), and the traced state is the state two real steps leave."""
    from model.gpt import GPT
    from optim import build_optimizer
    from speedrun.config import resolve_auto

    cfg = resolve(["--preset=tiny", "--dtype=fp32", f"--optimizer={optimizer}"])
    est = estimate_step_memory(cfg, device_type="cpu")
    cfg = resolve_auto(cfg, "cpu")
    model = GPT(cfg.model)
    opt = build_optimizer(cfg.optim, model)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    storages = {id(v.untyped_storage()): v.untyped_storage().nbytes()
                for s in opt.state.values() for v in s.values() if torch.is_tensor(v)}
    assert est.optimizer_bytes == sum(storages.values()) > 0


# --- the fit check the trainer runs before building the model ------------------------------------------------

def _required(estimate) -> int:
    return estimate.peak_bytes + margin_bytes(estimate.peak_bytes)


def test_a_step_that_does_not_fit_is_refused_before_the_model_is_built(text_shards, tmp_path, monkeypatch):
    """The trainer on a device whose memory is simulated (train.device_memory_bytes): with room for a 2-row
    micro-batch but not a 4-row one, an 8-row config is refused before any model exists, with the estimate, the
    memory and `--batch_size=2 --grad_accum=4` (the same tokens per step); with room for nothing it says so; with
    room for it, the run starts and records the estimate."""
    import train

    args = ["--preset=tiny", f"--data_dir={text_shards}", f"--out_dir={tmp_path}", "--dtype=fp32", "--batch_size=8",
            "--max_steps=1", "--threads=1"]
    cfg = resolve(args)
    full = estimate_step_memory(cfg, device_type="cpu", micro_batches=1)
    four, two = (estimate_step_memory(cfg, device_type="cpu", batch_size=b, micro_batches=2) for b in (4, 2))
    assert _required(full) > _required(four) > _required(two)
    built = []
    monkeypatch.setattr(train, "GPT", lambda *a, **k: built.append(1))  # a model built too early shows up here

    monkeypatch.setattr(train, "device_memory_bytes", lambda device: _required(two))
    with pytest.raises(StepDoesNotFit) as refused:
        train.Trainer(cfg)
    message = str(refused.value)
    assert f"estimated peak {full.peak_bytes / 1e9:.2f} GB" in message
    assert f"needs {_required(full) / 1e9:.1f} GB of the device's {_required(two) / 1e9:.1f} GB" in message
    assert "at the same tokens per step, --batch_size=2 --grad_accum=4 fits" in message and not built

    monkeypatch.setattr(train, "device_memory_bytes", lambda device: _required(two) // 2)
    with pytest.raises(StepDoesNotFit, match="not even a micro-batch of 1 row fits"):
        train.Trainer(cfg)
    assert not built

    monkeypatch.undo()
    monkeypatch.setattr(train, "device_memory_bytes", lambda device: _required(full))
    summary = train.Trainer(cfg).run()
    assert summary["memory_estimate_gb"] == round(full.peak_bytes / 1e9, 2)
    assert not train.Trainer(resolve([*args, "--memory_check=False"])).memory


def test_check_fit_returns_the_estimate_when_it_fits():
    cfg = resolve(["--preset=tiny", "--dtype=fp32"])
    estimate = estimate_step_memory(cfg, device_type="cpu")
    assert check_fit(cfg, _required(estimate), device_type="cpu") == estimate
    with pytest.raises(StepDoesNotFit, match="tiny-gpu"):
        check_fit(cfg, _required(estimate) - 1, device_type="cpu", device_name="tiny-gpu")


@pytest.mark.parametrize("preset", ["gpt2-124m", "track3"])
def test_gpu_presets_fit_in_75_gb_with_their_cuda_implementations(preset):
    """Each GPU preset's step at its micro-batch (2 micro-batches: a rank that accumulates holds the gradients
    while the second runs), with what it resolves on CUDA: the Triton MLP, loss and Newton-Schulz, bf16."""
    try:
        estimate = estimate_step_memory(resolve([f"--preset={preset}"]), device_type="cuda")
    except RuntimeError as e:  # re-raised without the traceback, whose fake-tensor frames take minutes to print
        raise AssertionError(f"{preset}'s step cannot be traced on fake tensors: {type(e).__name__}: {e}") from None
    assert "mlp triton, ce triton" in estimate.implementations and "ns triton" in estimate.implementations
    assert estimate.peak_bytes <= 75e9, str(estimate)
