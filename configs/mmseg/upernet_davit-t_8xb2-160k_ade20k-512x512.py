# DaViT-T UperNet 160k: the Swin-T UperNet recipe the DaViT paper follows (AdamW 6e-5, wd 0.01, poly, drop_path 0.3).
_base_ = './_base_/upernet_vimzoo_160k_ade20k.py'

model = dict(
    backbone=dict(model_name='davit_tiny', drop_path_rate=0.3),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
