# DaViT-T Mask R-CNN 1x. The DaViT paper reports Mask R-CNN 1x with the Swin recipe (AdamW 1e-4, wd 0.05, 1x);
# drop_path 0.2 as in dingmyu/davit's DaViT-T detection config. The backbone adds DaViT's per-stage output LayerNorm.
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

model = dict(
    backbone=dict(model_name='davit_tiny', drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))
