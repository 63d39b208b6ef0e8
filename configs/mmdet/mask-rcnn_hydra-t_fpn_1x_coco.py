# Hydra-T Mask R-CNN 1x. Hydra has no official detection code or weights (the paper evaluates GLUE and ImageNet
# only). The backbone is isometric, so it is used ViTDet-style like the other plain backbones here: the last block's
# stride-16 map -> simple pyramid with LayerNorm -> FPN, the transformer 1x recipe with layer-wise lr decay 0.75.
# dynamic_img_size: detection inputs vary in size (padded to multiples of 32), the position embedding is resampled.
_base_ = './_base_/mask-rcnn_vimzoo_fpn_1x_coco.py'

custom_imports = dict(imports=['vimzoo.mm', 'vimzoo.mm.optim'], allow_failed_imports=False)

model = dict(
    backbone=dict(model_name='hydra_tiny_patch16_224', out_indices=[11], pyramid_norm='LN', drop_path_rate=0.1,
                  dynamic_img_size=True),
    neck=dict(in_channels=[192, 192, 192, 192]))

optim_wrapper = dict(
    constructor='VimZooLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.75))
