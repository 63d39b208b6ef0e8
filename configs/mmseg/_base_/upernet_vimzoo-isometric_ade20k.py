# UperNet for isometric (plain) backbones, following Vim-seg (hustvl/Vim seg/configs/vim/upernet/
# upernet_vim_tiny_24_512_slide_60k.py): 4 block outputs (last block of each quarter) -> simple pyramid
# (ConvT-SyncBN-GELU-ConvT / ConvT / identity / max-pool), UPerHead with channels = embed dim, FCN aux head,
# AdamW lr 1e-4 wd 0.05 with layer-wise lr decay 0.92, 512x512 crops, 60k iters, sliding-window test (stride 341).
_base_ = './upernet_vimzoo_160k_ade20k.py'

custom_imports = dict(imports=['vimzoo.mm', 'vimzoo.mm.optim'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(pyramid_norm='SyncBN'),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=192),
    auxiliary_head=dict(in_channels=192),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='VimZooLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.92))
max_iters = 60000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=6000)
default_hooks = dict(checkpoint=dict(interval=6000))
