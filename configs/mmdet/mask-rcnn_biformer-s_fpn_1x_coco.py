# BiFormer-S Mask R-CNN 1x (official: rayleizhu/BiFormer object_detection/configs/coco/maskrcnn.1x.biformer_small.py,
# reported 47.8 box AP / 43.2 mask AP). Detection uses n_win=16 (7 for classification; n_win has no parameters),
# drop_path 0.2, AdamW lr 1e-4 wd 0.05, 1x, fp16. The backbone adds BiFormer's per-level LayerNorm2d (eps 1e-6).
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

model = dict(
    backbone=dict(model_name='biformer_small', n_win=16, drop_path_rate=0.2),
    neck=dict(in_channels=[64, 128, 256, 512]))

# official `fp16 = dict()`: mmcv's Fp16OptimizerHook with its default loss scale 512
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
