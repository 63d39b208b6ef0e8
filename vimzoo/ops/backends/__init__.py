"""Backends of the vimzoo ops, one module each with the same functions (NATTEN-style):

    can_run(op, device, tensors=(), channels=None, d_state=None) -> None if it can, else the reason (a string)
    scan_fwd, scan_bwd, bidir_fwd, conv_fwd, conv_bwd, mamba_inner_fwd, add_rms_norm_fwd,
    ssd_fwd, ssd_bwd, qs_fwd, qs_bwd          (Mamba-2 SSD scan and Hydra's quasiseparable core)

`op` is the custom op's name ('selective_scan', 'selective_scan_bwd', 'bidirectional_selective_scan',
'causal_conv1d', 'causal_conv1d_bwd', 'mamba_inner_fwd', 'add_rms_norm_fwd', 'ssd_scan', 'ssd_scan_bwd',
'quasiseparable_scan', 'quasiseparable_scan_bwd'; for the SSD ops `d_state` is B.shape[-1]).
vimzoo.ops._choose picks one.
Importing a backend never builds or imports its compiled code; `can_run` does, on first use.
"""
from . import cpu, cuda, reference

REGISTRY = {module.NAME: module for module in (reference, cpu, cuda)}

__all__ = ['REGISTRY', 'reference', 'cpu', 'cuda']
