"""Backends of the vimzoo ops, one module each with the same functions (NATTEN-style):

    can_run(op, device, tensors=(), channels=None, d_state=None, window=1) -> None if it can, else the reason
    scan_fwd, scan_bwd, bidir_fwd, conv_fwd, conv_bwd, mamba_inner_fwd, mamba_inner_bwd, add_rms_norm_fwd,
    add_rms_norm_bwd,
    ssd_fwd, ssd_bwd, qs_fwd, qs_bwd          (Mamba-2 SSD scan and Hydra's quasiseparable core)

`op` is the custom op's name ('selective_scan', 'selective_scan_bwd', 'bidirectional_selective_scan',
'causal_conv1d', 'causal_conv1d_bwd', 'mamba_inner_fwd', 'mamba_inner_bwd', 'add_rms_norm_fwd', 'add_rms_norm',
'add_rms_norm_bwd', 'ssd_scan', 'ssd_scan_bwd', 'quasiseparable_scan', 'quasiseparable_scan_bwd'); `window` is the
scans' LB window (1 = none); for the SSD ops `d_state` is B.shape[-1]. vimzoo.ops._choose picks the backend.
Importing a backend never builds or imports its compiled code; `can_run` does, on first use.
"""
from . import cpu, cuda, mamba_ssm, reference, triton

REGISTRY = {module.NAME: module for module in (reference, cpu, cuda, triton, mamba_ssm)}

__all__ = ['REGISTRY', 'reference', 'cpu', 'cuda', 'triton', 'mamba_ssm']
