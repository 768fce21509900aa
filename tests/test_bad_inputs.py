"""Every public entry point rejects bad input with an error that names the problem (one table).

Each row: what is called, the exception type, and a pattern the message must contain. The per-module
tests go deeper; this table is the one place that shows the whole surface at a glance.
"""

import numpy as np
import pytest
import torch

import checkpoint
from configs import resolve
from data import shards, tokenizer
from data.loader import TokenLoader, val_batches
from kernels import registry


def ns(*args, **kwargs):
    return registry.get("newton_schulz", "triton")(*args, **kwargs)


def ce(*args, **kwargs):
    return registry.get("linear_cross_entropy", "triton")(*args, **kwargs)


def mlp(*args, **kwargs):
    return registry.get("relu2_mlp", "triton")(*args, **kwargs)


def attention(backend, *args, **kwargs):
    return registry.get("attention", backend)(*args, **kwargs)


h, w, t = torch.randn(5, 8), torch.randn(11, 8), torch.randint(0, 11, (5,))
w_fc, w_proj = torch.randn(12, 8), torch.randn(8, 12)
q = torch.randn(1, 4, 2, 8)

KERNEL_CASES = [
    ("ns: 1-D", lambda: ns(torch.randn(5)), ValueError, "2 or 3 dims"),
    ("ns: integer dtype", lambda: ns(torch.ones(4, 4, dtype=torch.int32)), TypeError, "dtype torch.int32"),
    ("ns: empty", lambda: ns(torch.randn(0, 4)), ValueError, "empty"),
    ("ns: unknown coefficients", lambda: ns(torch.randn(4, 4), coefficients="quartic"), ValueError, "quartic"),
    ("ce: hidden dim", lambda: ce(h, torch.randn(11, 7), t), ValueError, "hidden dim H"),
    ("ce: mixed dtypes", lambda: ce(h.half(), w, t), TypeError, "share one dtype"),
    ("ce: target out of range (the opt-in check)", lambda: ce(h, w, torch.tensor([0, 1, 2, 3, 11]),
                                                              validate_targets=True), ValueError,
     r"targets\[4\] = 11 is outside \[0, V=11\)"),
    ("ce: non-contiguous", lambda: ce(torch.randn(8, 5).T, w, t), ValueError, "contiguous"),
    ("ce: empty", lambda: ce(h[:0], w, t[:0]), ValueError, "empty"),
    ("ce: target count", lambda: ce(h, w, t[:4]), ValueError, "4 entries but hidden has N=5"),
    ("mlp: dtype", lambda: mlp(h, w_fc.double(), w_proj), TypeError, "float64"),
    ("mlp: shape", lambda: mlp(h, torch.randn(12, 7), w_proj), ValueError, "H = 8 columns"),
    ("mlp: non-contiguous", lambda: mlp(torch.randn(8, 5).T, torch.randn(12, 5), torch.randn(5, 12)), ValueError,
     "contiguous"),
    ("attention: shapes", lambda: attention("sdpa", q, torch.randn(1, 5, 2, 8), q), ValueError, r"\(B, T, H, D\)"),
    ("attention: missing backend", lambda: attention("fa3", q.bfloat16(), q.bfloat16(), q.bfloat16()),
     RuntimeError, "fa3"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in KERNEL_CASES], ids=[c[0] for c in KERNEL_CASES])
def test_kernel_launchers(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _shard(tmp_path, name="s.bin", tokens=(1, 2, 3)):
    path = tmp_path / name
    shards.write_shard(path, np.array(tokens))
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-2])
    return path


def _foreign(path):
    path.write_bytes(b"PK\x03\x04" + bytes(2000))
    return path


def _bad_tokenizer_dir(tmp_path):
    (tmp_path / "vocab.bpe").write_text("not the GPT-2 merges")
    (tmp_path / "encoder.json").write_text("{}")
    return tmp_path


DATA_CASES = [
    ("shard: truncated", lambda p: shards.load_shard(_truncate(_shard(p))), shards.ShardError, "truncated"),
    ("shard: foreign file", lambda p: shards.load_shard(_foreign(p / "x.bin")), shards.ShardError,
     "not a speedrun token shard"),
    ("shard: token out of range", lambda p: shards.write_shard(p / "y.bin", np.array([70000])), ValueError, "70000"),
    ("shards: none match", lambda p: shards.list_shards(p, "*_train_*.bin"), FileNotFoundError, "data.prepare"),
    ("tokenizer: wrong hash", lambda p: tokenizer.offline_gpt2_encoding(_bad_tokenizer_dir(p)),
     tokenizer.TokenizerFileError, "sha256 mismatch"),
    ("loader: rank outside world", lambda p: TokenLoader([_shard(p)], batch_size=1, seq_len=1, rank=2, world_size=2),
     ValueError, "rank 2"),
    ("val: too few tokens", lambda p: val_batches([_shard(p)], n_tokens=8, batch_size=1, seq_len=4), ValueError,
     "hold 3 tokens"),
    ("config: unknown option", lambda p: resolve(["--lr=1"]), ValueError, "unknown option --lr"),
    ("checkpoint: damaged", lambda p: checkpoint.load(str(_foreign(p / "c.pt"))), RuntimeError, "could not be read"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_data_config_and_checkpoint_readers(tmp_path, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(tmp_path)
