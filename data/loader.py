"""Sharded token loading for training (TokenLoader) and a fixed validation set (val_batches).

The token stream. Shards are read whole and in order (like modded-nanogpt's loader). Each step takes one
contiguous *global window* of world_size*batch_size*seq_len + 1 tokens from the current shard and then
advances by world_size*batch_size*seq_len, so consecutive windows share one boundary token (the last
target of one step is the first input of the next) and no token is skipped inside a shard. A window never
straddles two shards: when fewer than window + margin tokens remain, the rest of that shard is dropped and
the next shard starts. margin=0 takes every window that fits; modded-nanogpt's loader switches shards when
pos + window >= len, which is margin=1. Rank r uses tokens [r*B*T, (r+1)*B*T + 1) of the window, so ranks
never overlap and together cover it; every rank reads the same windows, so no communication is needed.

Order and seeds. seed=0 keeps the files in the order given (`list_shards` sorts them by name); any other
seed permutes the shard order with numpy's PCG64. Reading inside a shard is always sequential, so a
corpus that fits in one train shard gives the same stream for every seed. skip=K starts the stream K
windows later (the windows the first K steps would have read are passed over): the same order, a later and
disjoint stretch of the data (train.py's --data_offset).

Resuming. `state_dict()` records the shard order, the shard being read, the offset in it and the step
count; `load_state_dict()` on a fresh loader over the same files and with the same seed and tokens per
step continues with exactly the batches the original would have produced. The global stream depends only
on those, so a state saved by rank 0 resumes every rank.
"""

from pathlib import Path

import numpy as np
import torch

from data.shards import load_shard, read_header
from speedrun.cli import ConfigError, UserError

STATE_VERSION = 2  # 2: the margin


class DataExhausted(UserError, RuntimeError):
    """The train shards hold no further full window; raised instead of wrapping around silently."""


class ValDataError(UserError, ValueError):
    """The val shards cannot supply the requested validation set."""


class TokenLoader:
    """vocab_size: every token id of a shard is checked against it when the shard is opened (None: unchecked)."""

    def __init__(self, files, *, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 margin: int = 0, vocab_size: int | None = None, skip: int = 0):
        files = [Path(f) for f in files]
        if not files:
            raise ValueError("TokenLoader needs at least one shard file")
        _check_layout(batch_size, seq_len, rank, world_size)
        if margin < 0:
            raise ValueError(f"margin must be >= 0 tokens, got {margin}")
        if skip < 0:
            raise ValueError(f"skip must be >= 0 windows, got {skip}")
        self.files = files
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size, self.seed, self.margin = rank, world_size, seed, margin
        self.vocab_size = vocab_size
        self.num_tokens = [read_header(f).num_tokens for f in files]  # validates every shard up front
        self.order = _shard_order(len(files), seed)
        # position: the next window starts at `offset` in shard order[shard]
        self.shard, self.offset, self.steps = 0, 0, 0
        self._tokens, self._tokens_shard = None, None  # memmap of the shard being read
        self.skip = min(skip, self._windows())
        for _ in range(self.skip):  # positions only: nothing is read
            self.shard, self.offset = self._next_window()
            self.offset += self.tokens_per_step

    @property
    def tokens_per_step(self) -> int:
        """Input tokens of one step over all ranks: world_size * batch_size * seq_len."""
        return self.world_size * self.batch_size * self.seq_len

    def _windows(self) -> int:
        """Windows the shards hold from their start, by next_batch's rule (a window never straddles shards)."""
        window = self.tokens_per_step + 1
        return sum((n - window - self.margin) // self.tokens_per_step + 1 for n in self.num_tokens
                   if n >= window + self.margin)

    def steps_available(self) -> int:
        """How many steps the shards hold after the skipped windows, by next_batch's rule."""
        return self._windows() - self.skip

    def _next_window(self) -> tuple[int, int]:
        """(index into the shard order, offset) where the next window starts; (len(order), 0) when none is left."""
        window = self.tokens_per_step + 1
        shard, offset = self.shard, self.offset
        while shard < len(self.order) and offset + window + self.margin > self.num_tokens[self.order[shard]]:
            shard, offset = shard + 1, 0  # the tail of this shard is shorter than a window (+ margin): next shard
        return shard, offset

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y) for the next step, int64 of shape (batch_size, seq_len), y = x shifted by one."""
        window = self.tokens_per_step + 1
        shard, offset = self._next_window()
        if shard == len(self.order):
            total = sum(self.num_tokens)
            skipped = f" (after {self.skip} skipped windows)" if self.skip else ""
            raise DataExhausted(
                f"train data exhausted after {self.steps} steps{skipped}: {self.steps * self.tokens_per_step} tokens "
                f"consumed "
                f"of {total} available in {len(self.files)} shard(s); each step needs a window of {window} tokens "
                f"from one shard{f' with {self.margin} to spare' if self.margin else ''}. Use fewer steps or add "
                "shards."
            )
        tokens = self._shard_tokens(self.order[shard])
        local = self.batch_size * self.seq_len
        start = offset + self.rank * local
        buf = torch.from_numpy(tokens[start : start + local + 1].astype(np.int64))  # (B*T + 1,)
        x = buf[:-1].view(self.batch_size, self.seq_len)  # (B, T)
        y = buf[1:].view(self.batch_size, self.seq_len)  # (B, T)
        self.shard, self.offset, self.steps = shard, offset + self.tokens_per_step, self.steps + 1
        return x, y

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "files": [f.name for f in self.files],
            "num_tokens": list(self.num_tokens),
            "seed": self.seed,
            "margin": self.margin,
            "tokens_per_step": self.tokens_per_step,
            "order": list(self.order),
            "shard": self.shard,
            "offset": self.offset,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; raises ValueError if it was saved for other files, seed, margin or tokens per step."""
        expected = self.state_dict()
        for key in ("version", "files", "num_tokens", "seed", "margin", "tokens_per_step", "order"):
            if state.get(key) != expected[key]:
                raise ValueError(f"loader state does not match this loader: {key} is {state.get(key)!r} in the state, "
                                 f"{expected[key]!r} here")
        shard, offset, steps = int(state["shard"]), int(state["offset"]), int(state["steps"])
        if not (0 <= shard <= len(self.order) and offset >= 0 and steps >= 0):
            raise ValueError(f"loader state has an impossible position: shard {shard}, offset {offset}, steps {steps}")
        self.shard, self.offset, self.steps = shard, offset, steps

    def _shard_tokens(self, index: int) -> np.ndarray:
        if self._tokens_shard != index:
            self._tokens, self._tokens_shard = load_shard(self.files[index], self.vocab_size), index
        return self._tokens


def val_batches(files, *, n_tokens: int, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                vocab_size: int | None = None):
    """This rank's list of (x, y) over a fixed held-out set: the first n_tokens of the val shards, in file order
    (train.py's --val_tokens, which the errors name).

    Steps are windows of world_size*batch_size*seq_len (+1 for the last target) laid end to end, split
    across ranks like TokenLoader, so the ranks together cover exactly the first n_tokens tokens.
    """
    _check_layout(batch_size, seq_len, rank, world_size)
    per_step = world_size * batch_size * seq_len
    if n_tokens <= 0 or n_tokens % per_step:
        raise ConfigError(f"--val_tokens={n_tokens} must be a positive multiple of the tokens of one validation "
                           f"step, world_size*batch_size*seq_len = {world_size}*{batch_size}*{seq_len} = {per_step}")
    files = [Path(f) for f in files]
    available = sum(read_header(f).num_tokens for f in files)
    if available < n_tokens + 1:
        raise ValDataError(f"the val shards hold {available} tokens in {len(files)} file(s); --val_tokens={n_tokens} "
                           f"needs {n_tokens + 1} (one extra token for the last target). Lower --val_tokens or add "
                           "val data.")
    stream = _read_prefix(files, n_tokens + 1, vocab_size)
    local = batch_size * seq_len
    batches = []
    for step in range(n_tokens // per_step):
        start = step * per_step + rank * local
        buf = torch.from_numpy(stream[start : start + local + 1])  # (B*T + 1,)
        batches.append((buf[:-1].view(batch_size, seq_len), buf[1:].view(batch_size, seq_len)))
    return batches


def _check_layout(batch_size, seq_len, rank, world_size):
    if batch_size < 1 or seq_len < 1 or world_size < 1:
        raise ValueError(f"batch_size, seq_len and world_size must be >= 1, got {batch_size}, {seq_len}, {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")


def _shard_order(n: int, seed: int) -> list[int]:
    if seed == 0:
        return list(range(n))
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def _read_prefix(files, n: int, vocab_size: int | None = None) -> np.ndarray:
    """The first n tokens of the concatenated shards, as int64 (each shard's ids checked against vocab_size)."""
    parts, need = [], n
    for f in files:
        if need == 0:
            break
        part = load_shard(f, vocab_size)[:need]
        parts.append(part.astype(np.int64))
        need -= len(part)
    return np.concatenate(parts)
