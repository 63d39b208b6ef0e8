# HaloNet (timm halonet26t, ResNet-26-like with halo attention in stages 3-4) Mask R-CNN 1x. No official dense
# recipe exists; HaloNet is a BN conv-attention hybrid, so it keeps mmdet's ResNet 1x recipe (SGD 0.02, frozen stem,
# BN in eval mode). Halo attention tiles every map into 8x8 blocks, so the backbone zero-pads inputs to a multiple
# of 256 (= 32 x block size) and crops the features back.
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

model = dict(
    backbone=dict(model_name='halonet26t', frozen_stages=0, norm_eval=True),
    neck=dict(in_channels=[256, 512, 1024, 2048]))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))
