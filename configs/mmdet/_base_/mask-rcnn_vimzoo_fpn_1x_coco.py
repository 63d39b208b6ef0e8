# Mask R-CNN 1x on COCO with a vimzoo backbone: mmdet's R-50 config with the backbone swapped and the transformer 1x
# recipe (AdamW lr 1e-4, wd 0.05, 1000-iter linear warmup, steps at epochs 8 and 11; 8 GPUs x 2 images) that
# BiFormer, Swin, DaViT and most transformer backbones report their Mask R-CNN 1x numbers with.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['vimzoo.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='VimZooBackbone',
        model_name='',  # set by the family config
        pretrained=False,  # a local ImageNet checkpoint path (loaded through the family's checkpoint filter)
        frozen_stages=-1,
        norm_eval=False),
    neck=dict(in_channels=[]))  # = backbone.out_channels, set by the family config

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.,
                       custom_keys={'pos_embed': dict(decay_mult=0.), 'cls_token': dict(decay_mult=0.)}))
