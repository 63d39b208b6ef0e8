"""Stand-in for mmcv's compiled `mmcv/_ext` on an **mmcv-lite** install (tools/install_mm.sh VIMZOO_MM_MODE=lite).

mmdet 3.3 / mmseg 1.2 import `mmcv.ops` at module level, and mmcv-lite has no compiled ops, so nothing imports.
This module is copied to `<site-packages>/mmcv/_ext.py`: nms and average-mode RoIAlign (all that Mask R-CNN,
Faster R-CNN, RetinaNet and UperNet use) are served by torchvision's kernels; any other op raises a clear error when
it is *called*. It is a test tier for machines that cannot afford the ~7-10 min mmcv compile, not the real stack.
"""
import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.*)
from torchvision.ops import nms as _tv_nms
from torchvision.ops import roi_align as _tv_roi_align

VIMZOO_SHIM = True


def nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    if offset != 0:
        raise NotImplementedError('mmcv-lite shim: nms supports offset=0 only')
    return _tv_nms(bboxes.float(), scores.float(), float(iou_threshold))


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned):
    if pool_mode != 1:
        raise NotImplementedError('mmcv-lite shim: RoIAlign supports pool_mode="avg" only')
    output.copy_(_tv_roi_align(input, rois, (aligned_height, aligned_width), spatial_scale, sampling_ratio,
                               aligned))


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height, aligned_width,
                       spatial_scale, sampling_ratio, pool_mode, aligned):
    if pool_mode != 1:
        raise NotImplementedError('mmcv-lite shim: RoIAlign supports pool_mode="avg" only')
    b, c, h, w = grad_input.shape
    grad_input.copy_(torch.ops.torchvision._roi_align_backward(
        grad_output, rois, spatial_scale, aligned_height, aligned_width, b, c, h, w, sampling_ratio, aligned))


def __getattr__(name: str):
    if name.startswith('__'):
        raise AttributeError(name)

    def _missing(*args, **kwargs):
        raise NotImplementedError(f'mmcv._ext.{name} is not available on the mmcv-lite test tier; '
                                  'install the compiled stack with: bash tools/install_mm.sh')
    return _missing
