"""kernels.tiles: tile validation, config lookup and the numerics switches, with the messages a caller sees."""

import pytest
import torch

from kernels.tiles import Tile, lookup_config, precision_flags


def test_tile_is_validated_and_keyword_built():
    tile = Tile(block_m=128, block_n=64, block_k=32, warps=8, stages=3)
    assert tile.meta() == {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}
    assert tile.launch() == {"num_warps": 8, "num_stages": 3} and tile.name == "128x64x32 w8 s3"
    assert tile.smem_bytes(2) == 3 * (128 + 64) * 32 * 2
    with pytest.raises(ValueError, match=r"block_n must be a power of two >= 16.*got 48"):
        Tile(block_m=64, block_n=48, block_k=32, warps=4, stages=3)
    with pytest.raises(ValueError, match=r"block_k must be a power of two >= 16.*got 8"):
        Tile(block_m=64, block_n=64, block_k=8, warps=4, stages=3)
    with pytest.raises(ValueError, match="warps must be 1, 2, 4, 8 or 16, got 3"):
        Tile(block_m=64, block_n=64, block_k=32, warps=3, stages=3)
    with pytest.raises(ValueError, match="stages must be >= 1, got 0"):
        Tile(block_m=64, block_n=64, block_k=32, warps=4, stages=0)
    with pytest.raises(TypeError):
        Tile(64, 64, 32)  # the launch settings are not optional


def test_lookup_config_lists_what_exists():
    configs = {("big", torch.bfloat16): "B", ("small", torch.float32): "S"}
    assert lookup_config(configs, "small", torch.float32, "demo") == "S"
    with pytest.raises(ValueError, match=r"no demo config 'big' for torch.float32; configs: big \(bfloat16\), "
                                         r"small \(float32\)"):
        lookup_config(configs, "big", torch.float32, "demo")


def test_precision_flags():
    assert precision_flags(torch.bfloat16, interpreter=True) == {"UPCAST": True, "TF32X3": False, "RNE_BF16": True}
    assert precision_flags(torch.float32, interpreter=True) == {"UPCAST": True, "TF32X3": False, "RNE_BF16": False}
    assert precision_flags(torch.bfloat16, interpreter=False) == {"UPCAST": False, "TF32X3": False,
                                                                  "RNE_BF16": False}
    assert precision_flags(torch.float32, interpreter=False) == {"UPCAST": False, "TF32X3": True, "RNE_BF16": False}
