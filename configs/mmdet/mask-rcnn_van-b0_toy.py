# VAN-B0 Mask R-CNN on the built-in toy set (CPU, minutes): bash tools/dev.sh det, or
# python tools/mm_train.py mask-rcnn_van-b0_toy. Measured results: docs/mm.md.
_base_ = './_base_/mask-rcnn_vimzoo_toy.py'

model = dict(
    backbone=dict(model_name='van_b0'),
    neck=dict(in_channels=[32, 64, 160, 256]))
