# LBVim-T Mask R-CNN 1x. Official LBMamba detection (vitdet_cascade_mask-rcnn_bivim_tiny_norope_rms_lsj-300e.py):
# the last layer (out_indices=[23]) with LBVim's per-output LayerNorm, a simple pyramid (strides 4-32), Cascade
# Mask R-CNN at 1024 LSJ. Here: the same backbone features + pyramid into mmdet's FPN and the Mask R-CNN 1x recipe
# with layer-wise lr decay as for Vim.
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

custom_imports = dict(imports=['vimzoo.mm', 'vimzoo.mm.optim'], allow_failed_imports=False)

model = dict(
    backbone=dict(model_name='lbvim_tiny_patch16_224', out_indices=[23], pyramid_norm='LN', drop_path_rate=0.1),
    neck=dict(in_channels=[192, 192, 192, 192]))

optim_wrapper = dict(
    constructor='VimZooLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.837))
