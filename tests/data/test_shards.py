"""data/shards.py: round trip, atomic writes, and one test per header/size error."""

import os
import stat

import numpy as np
import pytest

from data.shards import (
    HEADER_BYTES,
    MAGIC,
    ShardError,
    list_shards,
    load_shard,
    read_header,
    write_shard,
)


def _raw_shard(path, header_ints, n_token_bytes):
    header = np.zeros(256, dtype="<i4")
    header[: len(header_ints)] = header_ints
    path.write_bytes(header.tobytes() + b"\x01" * n_token_bytes)
    return path


@pytest.mark.parametrize("n", [0, 1, 1001])
def test_round_trip(tmp_path, n):
    tokens = np.random.default_rng(n).integers(0, 2**16, size=n)
    header = write_shard(tmp_path / "a.bin", tokens)
    assert header.num_tokens == n and header.version == 1
    assert (tmp_path / "a.bin").stat().st_size == HEADER_BYTES + 2 * n
    assert read_header(tmp_path / "a.bin").num_tokens == n
    loaded = load_shard(tmp_path / "a.bin")
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, tokens)


def test_header_layout_matches_speedrun(tmp_path):
    write_shard(tmp_path / "a.bin", [50256, 15496, 995])
    raw = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=256)
    assert list(raw[:3]) == [MAGIC, 1, 3] and not raw[3:].any()
    assert np.fromfile(tmp_path / "a.bin", dtype="<u2", offset=HEADER_BYTES).tolist() == [50256, 15496, 995]


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    write_shard(tmp_path / "a.bin", [1, 2, 3])
    with pytest.raises(ValueError):
        write_shard(tmp_path / "a.bin", [1, 2**16])  # rejected: the old shard must survive intact
    assert load_shard(tmp_path / "a.bin").tolist() == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~umask  # readable by others, like any file


@pytest.mark.parametrize("tokens, message", [([0, 65536], "max 65536"), ([-1, 5], "min -1"),
                                             ([[1, 2]], "1-D"), ([0.5], "integers")])
def test_write_rejects_bad_tokens(tmp_path, tokens, message):
    with pytest.raises(ValueError, match=message):
        write_shard(tmp_path / "a.bin", np.array(tokens))
    assert not (tmp_path / "a.bin").exists()


def test_too_short_for_header(tmp_path):
    (tmp_path / "s.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ShardError, match=r"s\.bin: file is too short for a shard header \(100 bytes"):
        load_shard(tmp_path / "s.bin")


def test_foreign_magic(tmp_path):
    _raw_shard(tmp_path / "f.bin", [1234, 1, 0], 0)
    with pytest.raises(ShardError, match=r"f\.bin: not a speedrun token shard \(magic number 1234"):
        read_header(tmp_path / "f.bin")


def test_unsupported_version(tmp_path):
    _raw_shard(tmp_path / "v.bin", [MAGIC, 7, 0], 0)
    with pytest.raises(ShardError, match=r"v\.bin: unsupported shard version 7"):
        load_shard(tmp_path / "v.bin")


def test_truncated(tmp_path):
    _raw_shard(tmp_path / "t.bin", [MAGIC, 1, 10], 15)
    with pytest.raises(ShardError, match=r"t\.bin: truncated: .* expected 1044 bytes, found 1039"):
        load_shard(tmp_path / "t.bin")


def test_trailing_bytes(tmp_path):
    _raw_shard(tmp_path / "x.bin", [MAGIC, 1, 10], 23)
    with pytest.raises(ShardError, match=r"x\.bin: 3 trailing bytes: .* expected 1044 bytes, found 1047"):
        load_shard(tmp_path / "x.bin")


def test_shard_error_is_value_error():
    assert issubclass(ShardError, ValueError)


def test_list_shards_sorted(tmp_path):
    for name in ["b_train_000001.bin", "b_train_000000.bin", "b_val_000000.bin", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_shards(tmp_path, "*_train_*.bin")] == ["b_train_000000.bin", "b_train_000001.bin"]


def test_list_shards_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shards matching '\*_val_\*\.bin'.*python -m data\.prepare pydocs"):
        list_shards(tmp_path, "*_val_*.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_shards(tmp_path / "missing", "*.bin")
