# VAN-B2 Mask R-CNN 1x. VAN has no official detection code (VAN-Segmentation#11, VAN-Classification#24); this is
# the transformer 1x recipe of the base config with VAN-B2's segmentation drop_path (0.1). Stage outputs are taken
# after VAN's per-stage LayerNorm, as in the official segmentation backbone.
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

model = dict(
    backbone=dict(model_name='van_b2', drop_path_rate=0.1),
    neck=dict(in_channels=[64, 128, 320, 512]))
