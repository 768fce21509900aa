"""data/loader.py: window layout, rank sharding, determinism, exact resume, exhaustion, fixed val set."""

import json

import numpy as np
import pytest
import torch

from data.loader import DataExhausted, TokenLoader, val_batches
from data.shards import write_shard

SIZES = [500, 333, 20, 420, 161, 250]  # shard 2 is shorter than one window: it must be skipped
B, T, WORLD = 2, 8, 2
N = WORLD * B * T  # tokens per step


@pytest.fixture
def shard_files(tmp_path):
    """Shard i holds i*10000 + arange(n): every token tells where it came from."""
    files = []
    for i, n in enumerate(SIZES):
        files.append(tmp_path / f"t_train_{i:06d}.bin")
        write_shard(files[-1], i * 10000 + np.arange(n))
    return files


def _stream(order, margin=0):
    """The expected global windows, shard by shard, for a shard order: window k of a shard is taken while
    k*N + N + 1 + margin tokens fit in it."""
    windows = []
    for i in order:
        tokens = i * 10000 + np.arange(SIZES[i])
        windows += [tokens[k * N : k * N + N + 1] for k in range((SIZES[i] - 1 - margin) // N)]
    return windows


def _take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_batch_shape_dtype_and_shift(shard_files):
    x, y = TokenLoader(shard_files, batch_size=B, seq_len=T).next_batch()
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    assert torch.equal(x.flatten()[1:], y.flatten()[:-1])
    assert x.flatten().tolist() == list(range(B * T)) and y.flatten().tolist() == list(range(1, B * T + 1))


def test_ranks_split_each_window_without_overlap(shard_files):
    loaders = [TokenLoader(shard_files, batch_size=B, seq_len=T, rank=r, world_size=WORLD) for r in range(WORLD)]
    assert loaders[0].tokens_per_step == N
    for window in _stream(range(len(SIZES)))[:20]:
        batches = [loader.next_batch() for loader in loaders]
        xs = torch.cat([x.flatten() for x, _ in batches]).tolist()
        ys = torch.cat([y.flatten() for _, y in batches]).tolist()
        assert xs == window[:-1].tolist() and ys == window[1:].tolist()  # full coverage, in rank order
        assert len(set(xs)) == len(xs)  # no overlap between ranks


def test_whole_stream_then_exhausted(shard_files):
    loader = TokenLoader(shard_files, batch_size=B, seq_len=T, world_size=WORLD)
    expected = _stream(range(len(SIZES)))
    got = [torch.cat([x.flatten(), y.flatten()[-1:]]).tolist() for x, y in _take(loader, len(expected))]
    # rank 0 sees the first B*T+1 tokens of every window
    assert got == [w[: B * T + 1].tolist() for w in expected]
    state = loader.state_dict()
    message = f"{len(expected)} steps: {len(expected) * N} tokens consumed of {sum(SIZES)} available in 6 shard"
    with pytest.raises(DataExhausted, match=message):
        loader.next_batch()
    with pytest.raises(DataExhausted):  # a failed call does not move the position
        loader.next_batch()
    assert loader.state_dict() == state and issubclass(DataExhausted, RuntimeError)


@pytest.mark.parametrize("margin", [0, 1])
def test_margin_drops_a_window_that_would_end_a_shard(shard_files, margin):
    """161 = 5*32 + 1 tokens: margin 0 takes 5 windows, margin 1 (modded-nanogpt's `pos + window >= len` rule)
    switches after 4, as a window must leave a token to spare; the other shards are unaffected."""
    loader = TokenLoader(shard_files, batch_size=B, seq_len=T, world_size=WORLD, margin=margin)
    expected = _stream(range(len(SIZES)), margin)
    assert len(expected) == len(_stream(range(len(SIZES)))) - margin
    got = [torch.cat([x.flatten(), y.flatten()[-1:]]).tolist() for x, y in _take(loader, len(expected))]
    assert got == [w[: B * T + 1].tolist() for w in expected]
    with pytest.raises(DataExhausted, match=f"with {margin} to spare" if margin else "from one shard. Use"):
        loader.next_batch()
    with pytest.raises(ValueError, match="margin must be >= 0"):
        TokenLoader(shard_files, batch_size=B, seq_len=T, margin=-1)


def test_same_seed_same_batches_other_seed_other_order(shard_files):
    def first(seed, n=25):
        return [x.tolist() for x, _ in _take(TokenLoader(shard_files, batch_size=B, seq_len=T, seed=seed), n)]

    assert first(1) == first(1)
    a, b = TokenLoader(shard_files, batch_size=B, seq_len=T, seed=1), TokenLoader(shard_files, batch_size=B,
                                                                                  seq_len=T, seed=2)
    assert a.order != b.order and sorted(a.order) == list(range(len(SIZES)))
    assert first(1) != first(2)
    assert TokenLoader(shard_files, batch_size=B, seq_len=T, seed=0).order == list(range(len(SIZES)))


@pytest.mark.parametrize("margin", [0, 1])
@pytest.mark.parametrize("k", [0, 3, 15, 16, 35])  # 15 windows fit in shard 0: 15/16 resume across the boundary
def test_resume_gives_identical_batches(shard_files, k, margin):
    kwargs = dict(batch_size=B, seq_len=T, world_size=WORLD, seed=3, margin=margin)
    original = TokenLoader(shard_files, rank=1, **kwargs)
    _take(original, k)
    state = json.loads(json.dumps(original.state_dict()))  # survives serialisation
    resumed = TokenLoader(shard_files, rank=1, **kwargs)
    resumed.load_state_dict(state)
    for (x0, y0), (x1, y1) in zip(_take(original, 12), _take(resumed, 12)):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert resumed.state_dict() == original.state_dict()


def test_state_from_rank0_resumes_rank1(shard_files):
    kwargs = dict(batch_size=B, seq_len=T, world_size=WORLD)
    rank0, rank1 = TokenLoader(shard_files, rank=0, **kwargs), TokenLoader(shard_files, rank=1, **kwargs)
    _take(rank0, 5)
    _take(rank1, 5)
    fresh = TokenLoader(shard_files, rank=1, **kwargs)
    fresh.load_state_dict(rank0.state_dict())
    assert torch.equal(fresh.next_batch()[0], rank1.next_batch()[0])


@pytest.mark.parametrize("change, key", [(dict(seed=5), "seed"), (dict(seq_len=4), "tokens_per_step"),
                                         (dict(margin=1), "margin")])
def test_state_for_other_config_is_rejected(shard_files, change, key):
    state = TokenLoader(shard_files, batch_size=B, seq_len=T).state_dict()
    other = TokenLoader(shard_files, **{**dict(batch_size=B, seq_len=T), **change})
    with pytest.raises(ValueError, match=f"{key} is"):
        other.load_state_dict(state)


def test_state_for_other_files_is_rejected(shard_files):
    state = TokenLoader(shard_files, batch_size=B, seq_len=T).state_dict()
    with pytest.raises(ValueError, match="files is"):
        TokenLoader(shard_files[:-1], batch_size=B, seq_len=T).load_state_dict(state)


def test_bad_layout_is_rejected(shard_files):
    with pytest.raises(ValueError, match="rank 2 is outside"):
        TokenLoader(shard_files, batch_size=B, seq_len=T, rank=2, world_size=2)
    with pytest.raises(ValueError, match="at least one"):
        TokenLoader([], batch_size=B, seq_len=T)


def test_val_batches_cover_prefix_across_shards(shard_files):
    n_tokens = 20 * N  # 640 tokens: crosses from shard 0 (500 tokens) into shard 1
    stream = np.concatenate([i * 10000 + np.arange(n) for i, n in enumerate(SIZES)])[: n_tokens + 1]
    per_rank = [val_batches(shard_files, n_tokens=n_tokens, batch_size=B, seq_len=T, rank=r, world_size=WORLD)
                for r in range(WORLD)]
    assert all(len(batches) == n_tokens // N for batches in per_rank)
    xs = torch.cat([torch.cat([x.flatten() for x, _ in step]) for step in zip(*per_rank)])
    ys = torch.cat([torch.cat([y.flatten() for _, y in step]) for step in zip(*per_rank)])
    assert xs.tolist() == stream[:-1].tolist() and ys.tolist() == stream[1:].tolist()
    again = val_batches(shard_files, n_tokens=n_tokens, batch_size=B, seq_len=T, rank=1, world_size=WORLD)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, per_rank[1]))  # a fixed set


def test_val_batches_too_few_tokens(shard_files):
    with pytest.raises(ValueError, match=r"hold 500 tokens in 1 file\(s\); --val_tokens=512 needs 513"):
        val_batches(shard_files[:1], n_tokens=512, batch_size=B, seq_len=T, world_size=WORLD)
    with pytest.raises(ValueError, match="multiple of"):
        val_batches(shard_files, n_tokens=100, batch_size=B, seq_len=T, world_size=WORLD)


@pytest.mark.parametrize("margin", [0, 1])
@pytest.mark.parametrize("skip", [1, 3, 15])
def test_skip_starts_the_same_stream_later(shard_files, margin, skip):
    """skip=K: the batches the loader without skip gives from its K-th on, across shard switches (K=15 crosses
    the short shard), and K fewer steps available."""
    full = TokenLoader(shard_files, batch_size=B, seq_len=T, world_size=1, seed=7, margin=margin)
    later = TokenLoader(shard_files, batch_size=B, seq_len=T, world_size=1, seed=7, margin=margin, skip=skip)
    assert later.steps_available() == full.steps_available() - skip
    expected = _take(full, full.steps_available())[skip:]
    got = _take(later, later.steps_available())
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    with pytest.raises(DataExhausted, match=f"after {skip} skipped windows"):
        later.next_batch()


def test_skipped_stream_resumes_exactly(shard_files):
    a = TokenLoader(shard_files, batch_size=B, seq_len=T, world_size=1, seed=3, skip=4)
    _take(a, 5)
    state = a.state_dict()
    b = TokenLoader(shard_files, batch_size=B, seq_len=T, world_size=1, seed=3, skip=4)
    b.load_state_dict(state)
    for (x, y), (ex, ey) in zip(_take(b, 6), _take(a, 6)):
        assert torch.equal(x, ex) and torch.equal(y, ey)
