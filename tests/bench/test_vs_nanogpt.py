"""bench.vs_nanogpt end to end at a tiny shape, against a stand-in written here in nanoGPT's layout (train.py,
model.py, configurator.py; data/<dataset>/{train,val}.bin of uint16 tokens; its log lines and ckpt.pt): the split
written for both trainers, the lr grid widened to an interior best point, the common level from the final
weights on the shared val tokens, the seconds and the ratio; refusals on a busy machine and a wrong checkout."""

import json

import numpy as np
import pytest

from bench import vs_nanogpt
from speedrun.cli import UserError

CONFIGURATOR = '''import sys
from ast import literal_eval

for _arg in sys.argv[1:]:
    _key, _value = _arg[2:].split("=", 1)
    assert _key in globals(), _key
    try:
        _value = literal_eval(_value)
    except (SyntaxError, ValueError):
        pass
    globals()[_key] = _value
'''

MODEL = '''"""A stand-in with nanoGPT's interface: a bigram model (a token's embedding, then the logits)."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 50304
    n_layer: int = 1
    n_head: int = 1
    n_embd: int = 8
    dropout: float = 0.0
    bias: bool = False


class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = torch.nn.Embedding(config.vocab_size, config.n_embd)
        self.head = torch.nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx, targets=None):
        logits = self.head(self.embed(idx))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
'''

TRAIN = '''"""A stand-in trainer printing nanoGPT's log lines."""
import os
import time

import numpy as np
import torch

from model import GPT, GPTConfig

out_dir = "out"; dataset = "x"; device = "cuda"; dtype = "bfloat16"; compile = True; n_layer = 12; n_head = 12
n_embd = 768; block_size = 1024; batch_size = 12; gradient_accumulation_steps = 40; dropout = 0.0; bias = False
learning_rate = 6e-4; min_lr = 6e-5; max_iters = 100; lr_decay_iters = 100; warmup_iters = 10
eval_interval = 10; eval_iters = 5; log_interval = 1; always_save_checkpoint = True; wandb_log = False
exec(open("configurator.py").read())
os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(1337)
data = {s: np.memmap(os.path.join("data", dataset, s + ".bin"), dtype=np.uint16, mode="r") for s in ("train", "val")}
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                  vocab_size=50304, dropout=dropout)
model = GPT(GPTConfig(**model_args))
optimizer = model.configure_optimizers(0.1, learning_rate, (0.9, 0.95), "cpu")


def batch(split):
    ix = torch.randint(len(data[split]) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[split][i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[split][i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


it = 0
while True:
    if it % eval_interval == 0:
        with torch.no_grad():
            means = {s: float(np.mean([model(*batch(s))[1].item() for _ in range(eval_iters)])) for s in data}
        print(f"step {it}: train loss {means['train']:.4f}, val loss {means['val']:.4f}")
        if it > 0:
            print(f"saving checkpoint to {out_dir}")
            torch.save({"model": model.state_dict(), "model_args": model_args, "iter_num": it},
                       os.path.join(out_dir, "ckpt.pt"))
    start = time.time()
    _, loss = model(*batch("train"))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    print(f"iter {it}: loss {loss.item():.4f}, time {(time.time() - start) * 1000:.2f}ms, mfu -100.00%")
    it += 1
    if it > max_iters:
        break
'''


@pytest.fixture
def standin(tmp_path):
    path = tmp_path / "nanoGPT"
    path.mkdir()
    for name, text in (("configurator.py", CONFIGURATOR), ("model.py", MODEL), ("train.py", TRAIN)):
        (path / name).write_text(text)
    return path


def test_end_to_end_against_a_standin(text_shards, standin, tmp_path, capsys):
    out = tmp_path / "vs"
    result = vs_nanogpt.main([f"--nanogpt={standin}", "--preset=tiny", "--recipes=adamw", "--lrs=0.3,0.6",
                              "--widen=2", "--steps=6", "--eval-every=2", "--eval-iters=2", "--val-tokens=512",
                              "--threads=1", "--max-load=1000", f"--out={out}", f"--data_dir={text_shards}",
                              "--max_steps=6", "--val_every=2", "--optim.lr=0.02"])
    # the same split both sides: nanoGPT's .bin files are our shards' tokens, its val.bin our 512 val tokens
    from data.shards import list_shards, load_shard

    ours_val = load_shard(list_shards(str(out / "data"), "*_val_*.bin")[0])
    theirs_val = np.fromfile(out / "nanogpt" / "data" / "pydocs" / "val.bin", dtype=np.uint16)
    assert len(theirs_val) == 513 and np.array_equal(ours_val, theirs_val)
    assert np.array_equal(np.fromfile(out / "nanogpt" / "data" / "pydocs" / "train.bin", dtype=np.uint16),
                          load_shard(list_shards(str(text_shards), "*_train_*.bin")[0]))
    assert not (standin / "data").exists()  # the checkout is only read
    # the grid: widened until the best lr is interior (or --widen is spent), each point with its exact final loss
    lrs = [n["lr"] for n in result["nanogpt"]]
    assert len(lrs) >= 2 and lrs == sorted(lrs)
    best = min(result["nanogpt"], key=lambda n: n["exact"]["val_loss"])
    assert result["best_lr"] == best["lr"] and result["level"] == best["exact"]["val_loss"]
    assert result["edge"] == (best["lr"] in (lrs[0], lrs[-1]))
    assert result["edge"] or 0 < lrs.index(best["lr"]) < len(lrs) - 1
    for n in result["nanogpt"]:
        assert n["exact"]["step"] == 6 and [c[0] for c in n["curve"]] == [0, 2, 4, 6]
        assert 0 < n["train_seconds"]["6"] < n["wall_s"] and n["checkpoint_write_s"] >= 0
        assert n["load_before"] < 1000 and "other_cores" in n
    # ours: the curve against training seconds, the time to the level and the ratio
    o = result["ours"][0]
    assert o["recipe"] == "adamw" and [c[0] for c in o["curve"]] == [0, 2, 4, 6] and o["threads"] == 1
    if o["to_level"] is not None:
        assert o["to_level"]["ratio"] == pytest.approx(o["to_level"]["seconds"] / result["nanogpt_seconds"])
        assert o["to_level"]["logged_step"] >= o["to_level"]["step"]
    saved = json.loads((out / "vs_nanogpt.json").read_text())
    assert saved["level"] == result["level"] and saved["machine"]["threads"] == 1 and saved["commit"]
    page = (out / "vs_nanogpt.md").read_text()
    assert "Common level L" in page and "nanoGPT AdamW" in page and "load before/after" in page
    assert (out / "vs_nanogpt.png").stat().st_size > 0
    assert "NOT QUIET" in page or result["quiet"]


def test_nanogpt_seconds_leave_out_evaluations_checkpoint_writes_and_the_first_step():
    lines = [(0.0, "tokens per iteration will be: 512"), (1.0, "step 0: train loss 10.0, val loss 10.5"),
             (3.0, "iter 0: loss 10.0, time 2000.00ms"), (3.5, "iter 1: loss 9.0, time 500.00ms"),
             (4.5, "step 2: train loss 8.0, val loss 8.5"), (4.6, "saving checkpoint to out"),
             (5.3, "iter 2: loss 8.0, time 800.00ms"), (5.9, "iter 3: loss 7.5, time 600.00ms")]
    t = vs_nanogpt.nanogpt_seconds(lines, save_s=0.2)
    # iteration 1: 0.5 s; 2: 0.7 s less the 0.2 s write; 3: 0.6 s; 0 counts as their median 0.5
    assert t["train_seconds"] == pytest.approx({1: 0.5, 2: 1.0, 3: 1.5, 4: 2.1})
    assert t["curve"] == [[0, 10.5, 0.0], [2, 8.5, pytest.approx(1.0)]]


def test_time_to_a_level_interpolates_between_validations():
    curve = [[0, 10.0, 0.0], [10, 6.0, 5.0], [20, 4.0, 10.0]]
    assert vs_nanogpt.time_to(curve, 5.0) == {"seconds": 7.5, "step": 15.0, "logged_step": 20, "logged_seconds": 10.0}
    assert vs_nanogpt.time_to(curve, 3.0) is None


def test_refuses_a_busy_machine_and_a_wrong_checkout(text_shards, standin, tmp_path):
    with pytest.raises(UserError, match="the machine is busy .* --allow-load"):
        vs_nanogpt.main([f"--nanogpt={standin}", "--preset=tiny", "--max-load=0", f"--out={tmp_path / 'busy'}",
                         f"--data_dir={text_shards}", "--steps=2", "--eval-every=2", "--val-tokens=512"])
    assert not list((tmp_path / "busy" / "logs").iterdir())  # nothing ran
    with pytest.raises(UserError, match="no train.py, model.py, configurator.py there"):
        vs_nanogpt.main([f"--nanogpt={tmp_path}", f"--out={tmp_path / 'x'}"])
