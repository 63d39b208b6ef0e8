"""Launch configurations (plain Python, no Triton import): tile sizes per op, chosen from the problem shape.

These are static heuristics, not autotuned: no GPU has been available to tune them (docs/kernels.md). A tile is
(BLOCK_D channels, BLOCK_N states, CHUNK tokens); its element count bounds the registers a program needs.
"""
from dataclasses import dataclass

__all__ = ['ScanConfig', 'scan_config', 'next_pow2', 'MAX_STATE']

MAX_STATE = 256          # BLOCK_N covers all states of a channel in one tile
_FWD_TILE = 4096         # elements per (BLOCK_D, BLOCK_N, CHUNK) tile: ~32 fp32 registers per thread at 4 warps
_BWD_TILE = 2048         # the backward keeps ~10 such tiles live
_MAX_CHUNK = 64


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


@dataclass(frozen=True)
class ScanConfig:
    block_d: int
    block_n: int
    chunk: int
    num_warps: int = 4

    def __post_init__(self):
        for name in ('block_d', 'block_n', 'chunk'):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f'ScanConfig.{name} must be a power of two, got {value}.')


def scan_config(d: int, n: int, length: int, window: int, backward: bool) -> ScanConfig:
    """Chunks of up to 64 tokens (a power-of-two LB window up to 256 gets chunks that are a multiple of it, so its
    windows never cross a chunk), as many channels per program as the tile budget allows."""
    block_n = next_pow2(n)
    budget = _BWD_TILE if backward else _FWD_TILE
    chunk = max(1, min(_MAX_CHUNK, max(16, budget // block_n), next_pow2(length)))
    if 1 < window < length and window & (window - 1) == 0 and window <= 256:
        chunk = max(chunk, window)
    block_d = max(1, min(next_pow2(d), budget // (block_n * chunk)))
    return ScanConfig(block_d=block_d, block_n=block_n, chunk=chunk, num_warps=8 if block_n * chunk > 4096 else 4)
