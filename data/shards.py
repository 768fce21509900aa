"""The NanoGPT-speedrun token shard format. This module is the only place that knows it.

A shard is a little-endian binary file:

    header  256 x int32   [0] magic 20240520, [1] version 1, [2] token count N, the rest zero
    body    N x uint16    GPT-2 token ids (every id < 65536; GPT-2 has 50257)

so a valid file is exactly 1024 + 2*N bytes. This is the layout of the FineWeb shards the public speedrun
downloads (kjj0/fineweb10B-gpt2) and of what modded-nanogpt's `_load_data_shard` reads.

Every reader goes through `read_header`, which checks the header and the file size and raises `ShardError`
naming the file and the exact problem, so a corrupt or foreign file never reaches training as garbage tokens.
`load_shard(path, vocab_size=V)` also checks every token id against the model's vocabulary (one vectorized
max over the shard when it is opened), naming the file, the offset and the id of the first one out of range.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speedrun.atomic import atomic_write
from speedrun.cli import UserError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4  # 1024
HEADER_DTYPE = np.dtype("<i4")
TOKEN_DTYPE = np.dtype("<u2")  # 2 bytes per token
MAX_TOKENS = 2**31 - 1  # the count is stored in an int32


class ShardError(UserError, ValueError):
    """A file that is not a well-formed token shard; the message names the file and the problem."""


class MissingShards(UserError, FileNotFoundError):
    """No shard matches the pattern; the message gives the command that creates them."""


@dataclass(frozen=True)
class ShardHeader:
    path: Path
    version: int
    num_tokens: int

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + TOKEN_DTYPE.itemsize * self.num_tokens


def write_shard(path, tokens) -> ShardHeader:
    """Write `tokens` (any integer array-like) as a shard at `path`, atomically (temp file + os.replace)."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{path}: tokens must be integers, got dtype {tokens.dtype}")
    if tokens.size > MAX_TOKENS:
        raise ValueError(f"{path}: {tokens.size} tokens do not fit the int32 count of one shard (max {MAX_TOKENS})")
    if tokens.size:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= 2**16:
            raise ValueError(f"{path}: token ids must lie in [0, 65536) to be stored as uint16; got min {lo}, max {hi}")

    header = np.zeros(HEADER_INTS, dtype=HEADER_DTYPE)
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
    return ShardHeader(path=path, version=VERSION, num_tokens=int(tokens.size))


def read_header(path) -> ShardHeader:
    """Read and validate the header of the shard at `path`, and check the file size against its token count."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: file is too short for a shard header ({size} bytes, the header alone is "
                         f"{HEADER_BYTES})")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype=HEADER_DTYPE)
    magic, version, count = (int(v) for v in header[:3])
    if magic != MAGIC:
        raise ShardError(f"{path}: not a speedrun token shard (magic number {magic}, expected {MAGIC})")
    if version != VERSION:
        raise ShardError(f"{path}: unsupported shard version {version} (this code reads version {VERSION})")
    if count < 0:
        raise ShardError(f"{path}: negative token count {count} in the header")
    shard = ShardHeader(path=path, version=version, num_tokens=count)
    if size < shard.file_bytes:
        raise ShardError(f"{path}: truncated: the header says {count} tokens, so expected {shard.file_bytes} bytes, "
                         f"found {size}")
    if size > shard.file_bytes:
        raise ShardError(f"{path}: {size - shard.file_bytes} trailing bytes: the header says {count} tokens, so "
                         f"expected {shard.file_bytes} bytes, found {size}")
    return shard


def load_shard(path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map the tokens of a validated shard: a read-only uint16 np.memmap of length num_tokens.
    With vocab_size, every token id must be below it (an embedding lookup of a larger id fails deep inside the
    model, on a GPU as an asynchronous device assert)."""
    shard = read_header(path)
    if shard.num_tokens == 0:  # numpy cannot memory-map zero bytes
        return np.zeros(0, dtype=TOKEN_DTYPE)
    tokens = np.memmap(shard.path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(shard.num_tokens,))
    if vocab_size is not None and int(tokens.max()) >= vocab_size:
        offset = int(np.argmax(tokens >= vocab_size))
        raise ShardError(f"{shard.path}: token id {int(tokens[offset])} at offset {offset} (tokens after the header) "
                         f"is outside the model's vocabulary [0, {vocab_size}): the shard was made with another "
                         "tokenizer, or --model.vocab_size is too small")
    return tokens


def list_shards(directory, pattern: str) -> list[Path]:
    """The shards in `directory` whose names match the glob `pattern`, sorted by name."""
    directory = Path(directory)
    files = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not files:
        where = f"{directory}" if directory.is_dir() else f"{directory} (the folder does not exist)"
        raise MissingShards(
            f"no shards matching {pattern!r} in {where}. Create them with "
            f"`python -m data.prepare pydocs --out {directory}` (offline Python docs), "
            f"`python -m data.prepare text PATHS... --out {directory}` (your own text) or "
            f"`python -m data.prepare fineweb --train-shards N --out {directory}` (FineWeb from the Hugging Face hub)"
        )
    return files
