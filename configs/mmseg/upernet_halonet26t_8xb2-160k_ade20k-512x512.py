# HaloNet (timm halonet26t) UperNet 160k. No official dense recipe; as a BN conv-attention hybrid it keeps mmseg's
# ResNet UperNet recipe (SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9, 160k). Inputs are zero-padded to a multiple of
# 256 (32 x halo block size 8) inside the backbone and the features cropped back.
_base_ = './_base_/upernet_vimzoo_160k_ade20k.py'

model = dict(
    backbone=dict(model_name='halonet26t'),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005),
    clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=160000, by_epoch=False)]
