# BiFormer-S RetinaNet 1x (official: rayleizhu/BiFormer object_detection/configs/coco/retinanet.1x.biformer_small.py,
# reported 45.9 box AP): n_win=16, drop_path 0.2, FPN from stride 8 + 2 extra convs on input (P3-P7), AdamW lr 1e-4
# wd 1e-4, 1x, fp16 with loss scale 512. The official code computes (and LayerNorms) all 4 levels and feeds FPN with
# start_level=1, leaving the stride-4 norm unused (hence its find_unused_parameters=True); taking out_indices
# [1, 2, 3] with start_level=0 is the same network without the unused parameters.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['vimzoo.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='VimZooBackbone',
        model_name='biformer_small',
        out_indices=[1, 2, 3],
        n_win=16,
        drop_path_rate=0.2,
        pretrained=False,
        frozen_stages=-1,
        norm_eval=False),
    neck=dict(in_channels=[128, 256, 512], start_level=0, add_extra_convs='on_input', num_outs=5))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale=512.,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
