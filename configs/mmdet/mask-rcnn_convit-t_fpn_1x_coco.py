# ConViT-Ti Mask R-CNN 1x. ConViT has no official dense code; as an isometric ViT it is used ViTDet style (last
# block, simple pyramid with LayerNorm, FPN) with the transformer 1x recipe and layer-wise lr decay (0.75, the
# ViTDet ViT-B value). `dynamic_img_size=True` (ConViT's opt-in) resamples pos_embed / GPSA positions to any input.
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

custom_imports = dict(imports=['vimzoo.mm', 'vimzoo.mm.optim'], allow_failed_imports=False)

model = dict(
    backbone=dict(model_name='convit_tiny', out_indices=[11], pyramid_norm='LN', dynamic_img_size=True,
                  drop_path_rate=0.1),
    neck=dict(in_channels=[192, 192, 192, 192]))

optim_wrapper = dict(
    constructor='VimZooLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.75))
