"""atomic.atomic_write: the target is the old file or the whole new one, never a part, and nothing is left behind."""

import os

import pytest

from speedrun.atomic import atomic_write


def test_replaces_the_target_only_when_the_block_completes(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with atomic_write(target, "w") as f:
        f.write("one")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(target, "w") as f:
            f.write("two, half written")
            raise RuntimeError("midway")
    assert target.read_text() == "one" and sorted(os.listdir(target.parent)) == ["f.txt"]
    with atomic_write(target) as f:
        f.write(b"\x00three")
    assert target.read_bytes() == b"\x00three" and sorted(os.listdir(target.parent)) == ["f.txt"]


def test_honours_the_umask_and_refuses_other_modes(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "g.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "g.bin").stat().st_mode & 0o777 == 0o640
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(tmp_path / "h", "a"):
            pass
