"""FLOP formulas that torch's FlopCounterMode lacks on CPU, so MAC counts of attention models are complete.

torch registers formulas for the CUDA SDPA kernels only; on CPU, F.scaled_dot_product_attention dispatches to
`_scaled_dot_product_flash_attention_for_cpu`, which FlopCounterMode would silently count as zero.
"""
import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

__all__ = []

_aten = torch.ops.aten
if _aten._scaled_dot_product_flash_attention_for_cpu.default not in flop_registry:
    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
    def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

if _aten._scaled_dot_product_flash_attention_for_cpu_backward.default not in flop_registry:
    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
