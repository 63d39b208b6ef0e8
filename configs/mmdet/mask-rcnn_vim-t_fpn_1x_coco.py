# Vim-T Mask R-CNN 1x. Official Vim detection is detectron2 ViTDet (Cascade Mask R-CNN, 1024 LSJ, 100 ep): the last
# layer's map (stride 16) feeds a simple feature pyramid (deconv x2 -> 4, deconv -> 8, identity -> 16, max-pool -> 32,
# LayerNorm in the stride-4 branch); that is what this backbone does (out_indices=[23]), followed by mmdet's FPN.
# Optimiser: the transformer 1x recipe with Vim's layer-wise lr decay (ViTDet-style, 0.837 as in Vim's detectron2
# config for Vim-S; no Vim-T value is published).
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

custom_imports = dict(imports=['vimzoo.mm', 'vimzoo.mm.optim'], allow_failed_imports=False)

model = dict(
    backbone=dict(model_name='vim_tiny_patch16_224', out_indices=[23], pyramid_norm='LN', drop_path_rate=0.1),
    neck=dict(in_channels=[192, 192, 192, 192]))

optim_wrapper = dict(
    constructor='VimZooLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.837))
