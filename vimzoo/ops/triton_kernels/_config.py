"""Launch configurations (plain Python, no Triton import): tile sizes per op, chosen from the problem shape.

Static heuristics, not autotuned (no GPU has been available to time them). They are sized from ptxas's register
report for sm_90 (`tests/test_ops_triton.py` compiles the kernels without a GPU and fails on register spills): the
scan forward keeps ~8 tile elements per thread (a (2, 16, 64) tile at 8 warps: 125-128 registers), the backward,
which holds ~10 tiles live, ~4 (a (1, 16, 32) tile at 4 warps: 120-128 registers). A tile is (BLOCK_D channels,
BLOCK_N states, CHUNK tokens).
"""
from dataclasses import dataclass

__all__ = ['ScanConfig', 'scan_config', 'next_pow2', 'MAX_STATE', 'CONV_BLOCKS', 'norm_blocks']

MAX_STATE = 256          # BLOCK_N covers all states of a channel in one tile
_FWD = dict(tile=2048, per_thread=8, max_chunk=64)
_BWD = dict(tile=512, per_thread=4, max_chunk=32)
CONV_BLOCKS = (16, 64)   # (channels, tokens) per conv program: 8 elements per thread at 4 warps


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


@dataclass(frozen=True)
class ScanConfig:
    block_d: int
    block_n: int
    chunk: int
    num_warps: int = 4

    def __post_init__(self):
        for name in ('block_d', 'block_n', 'chunk', 'num_warps'):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f'ScanConfig.{name} must be a power of two, got {value}.')


def scan_config(d: int, n: int, length: int, window: int, backward: bool) -> ScanConfig:
    """Chunks of up to 64 (forward) / 32 (backward) tokens, as many channels per program as the tile budget allows,
    warps for the per-thread budget. In the forward, a power-of-two LB window up to 256 gets chunks that are a
    multiple of it, so its windows stay inside chunks (the backward carries windows across chunks anyway)."""
    plan = _BWD if backward else _FWD
    block_n = next_pow2(n)
    chunk = max(1, min(plan['max_chunk'], max(8, plan['tile'] // block_n), next_pow2(length)))
    if not backward and 1 < window < length and window & (window - 1) == 0 and window <= 256:
        chunk = max(chunk, window)
    block_d = max(1, min(next_pow2(d), plan['tile'] // (block_n * chunk)))
    tile = block_d * block_n * chunk
    return ScanConfig(block_d, block_n, chunk, num_warps=max(1, min(16, tile // (32 * plan['per_thread']))))


def norm_blocks(channels: int):
    """(rows per program, padded channels, warps) for add + RMSNorm: ~8 elements per thread."""
    block_c = next_pow2(channels)
    block_r = max(1, min(16, 2048 // block_c))
    return block_r, block_c, max(4, min(16, block_r * block_c // 256))
