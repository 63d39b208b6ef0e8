# DependencyViT-Ti Mask R-CNN 1x. No official code exists (paper re-implementation, no weights). Isometric, so used
# ViTDet style like ConViT: last block, simple pyramid with LayerNorm, FPN, transformer 1x recipe + layer decay 0.75.
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

custom_imports = dict(imports=['vimzoo.mm', 'vimzoo.mm.optim'], allow_failed_imports=False)

model = dict(
    backbone=dict(model_name='dependencyvit_tiny_patch16_224', out_indices=[11], pyramid_norm='LN',
                  drop_path_rate=0.1),
    neck=dict(in_channels=[192, 192, 192, 192]))

optim_wrapper = dict(
    constructor='VimZooLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.75))
