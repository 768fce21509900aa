"""bench.cpu_step: nanoGPT's step and ours at one tiny shape, phases, quiet-machine labelling, bad inputs.

The plumbing runs against a real nanoGPT checkout when NANOGPT_DIR names one (its model.py is never
copied here), else against a small stand-in model.py with nanoGPT's interface (GPTConfig fields, GPT(config),
forward(idx, targets) -> (logits, loss), configure_optimizers(weight_decay, learning_rate, betas,
device_type)), written by the test, so it needs no network.
"""

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch

from bench import cpu_step

STAND_IN = textwrap.dedent('''
    """A stand-in with nanoGPT's model.py interface: embedding tied to the head, ReLU MLP blocks."""
    from dataclasses import dataclass

    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    @dataclass
    class GPTConfig:
        block_size: int = 1024
        vocab_size: int = 50304
        n_layer: int = 12
        n_head: int = 12
        n_embd: int = 768
        dropout: float = 0.0
        bias: bool = True


    class GPT(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.blocks = nn.ModuleList(nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
                                        for _ in range(config.n_layer))
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.wte.weight = self.lm_head.weight
            print("stand-in built")

        def forward(self, idx, targets=None):
            x = self.wte(idx)
            for block in self.blocks:
                x = x + F.relu(block(x))
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten()) if targets is not None else None
            return logits, loss

        def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
            params = list(self.parameters())
            groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)
''')

REAL = os.environ.get("NANOGPT_DIR")
HAS_REAL = bool(REAL) and (Path(REAL) / "model.py").is_file()


@pytest.fixture
def nanogpt(tmp_path):
    if HAS_REAL:
        return Path(REAL)
    (tmp_path / "nanogpt").mkdir()
    (tmp_path / "nanogpt" / "model.py").write_text(STAND_IN)
    return tmp_path / "nanogpt"


TINY = ["--preset=tiny", "--n_layer=2", "--n_head=2", "--n_embd=32", "--batch_size=2", "--seq_len=32",
        "--threads=1", "--steps=3", "--warmup=1"]


def test_side_by_side_figures(nanogpt, text_shards, tmp_path, capsys):
    out = tmp_path / "step.json"
    r = cpu_step.main([f"--nanogpt={nanogpt}", *TINY, f"--data_dir={text_shards}", f"--json={out}",
                       "--max-load=1000", "--profile=1", "--model.value_embeds=False"])
    assert r["shape"] == dict(n_layer=2, n_head=2, n_embd=32, batch_size=2, seq_len=32, threads=1)
    assert len(r["nanogpt_s"]) == len(r["ours_s"]) == 3 and r["tokens_per_step"] == 64
    for side in ("nanogpt_ms", "ours_ms"):
        t = r[side]
        assert 0 < t["p20"] <= t["median"] <= t["p80"]
    assert r["ratio"] == pytest.approx(r["ours_ms"]["median"] / r["nanogpt_ms"]["median"])
    for side in ("nanogpt", "ours"):
        phases = r[f"{side}_phases_ms"]
        assert set(phases) == {"forward", "backward", "optimizer", "rest"}
        assert all(phases[k] > 0 for k in ("forward", "backward", "optimizer"))
        assert sum(phases.values()) <= 2 * r[f"{side}_ms"]["p80"]  # medians of parts of the same steps
    # the model we timed is ours at the shape asked for, with the overrides passed through
    assert r["overrides"] == [f"--data_dir={text_shards}", "--model.value_embeds=False"]
    assert r["ours_params"] > 0 and r["nanogpt_params"] > 0
    m = r["machine"]
    assert m["threads"] == 1 and m["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {"cpu", "platform", "loadavg_1m"} <= set(m) and r["other_cores"] >= 0
    assert r["commit"] and r["command"][1:3] == ["-m", "bench.cpu_step"]
    text = capsys.readouterr().out
    assert "ratio ours / nanoGPT" in text and "1 threads" in text and "aten::" in text  # the profile table
    assert "stand-in built" not in text  # nanoGPT's construction prints are kept out of the report
    assert json.loads(out.read_text())["ratio"] == r["ratio"]


def test_a_busy_machine_is_labelled(nanogpt, text_shards):
    r = cpu_step.main([f"--nanogpt={nanogpt}", *TINY, "--steps=1", f"--data_dir={text_shards}",
                       "--max-load=0", "--wait=0"])  # a load average is never below 0
    assert r["quiet"] is False
    text = cpu_step.report(r)
    assert "NOT QUIET" in text


def test_our_config_is_fp32_eager_at_the_shape():
    cfg = cpu_step.our_config("cpu", cpu_step.Shape(), "muon", [])
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (4, 4, 256)
    assert (cfg.batch_size, cfg.seq_len, cfg.grad_accum, cfg.threads) == (16, 256, 1, 2)
    assert cfg.optim.name == "muon" and cfg.compile == "off" and cfg.device == "cpu"
    assert cfg.dtype == "fp32" and cfg.optim.ns_dtype == "fp32"


def test_bad_nanogpt_paths(tmp_path, text_shards):
    with pytest.raises(SystemExit, match="no model.py there"):
        cpu_step.main([f"--nanogpt={tmp_path}", f"--data_dir={text_shards}"])
    (tmp_path / "model.py").write_text("x = 1\n")
    with pytest.raises(SystemExit, match="is not nanoGPT's model.py"):
        cpu_step.main([f"--nanogpt={tmp_path}"])
    (tmp_path / "model.py").write_text("import no_such_module_here\n")
    with pytest.raises(SystemExit, match="import failed: ModuleNotFoundError"):
        cpu_step.main([f"--nanogpt={tmp_path}"])
    with pytest.raises(SystemExit):
        cpu_step.main([f"--nanogpt={tmp_path}", "--steps=0"])


@pytest.mark.skipif(not HAS_REAL, reason="set NANOGPT_DIR to a karpathy/nanoGPT checkout to run against the real one")
def test_real_nanogpt_parameter_count():
    """nanoGPT's GPT at our shape: tied head, learned positions, bias=False -> V·d + T·d + L·12·d² + (2L+1)·d."""
    module = cpu_step.load_nanogpt(REAL)
    model = module.GPT(module.GPTConfig(block_size=16, vocab_size=1000, n_layer=2, n_head=2, n_embd=32, bias=False))
    d, L = 32, 2
    assert sum(p.numel() for p in model.parameters()) == 1000 * d + 16 * d + L * 12 * d * d + (2 * L + 1) * d
