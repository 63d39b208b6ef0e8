# UperNet on ADE20K (512x512 crops, 160k iters, 8 GPUs x 2 images) with a vimzoo backbone: mmseg's R-50 UperNet with
# the backbone swapped and the hierarchical-transformer recipe (AdamW lr 6e-5, wd 0.01, 1500-iter warmup, poly)
# that Swin / VAN / BiFormer / DaViT report UperNet results with.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py'
]

custom_imports = dict(imports=['vimzoo.mm'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='VimZooBackbone',
        model_name='',  # set by the family config
        pretrained=False,  # a local ImageNet checkpoint path (loaded through the family's checkpoint filter)
        frozen_stages=-1,
        norm_eval=False),
    decode_head=dict(in_channels=[], num_classes=150),  # in_channels = backbone.out_channels
    auxiliary_head=dict(in_channels=0, num_classes=150))  # = out_channels[2]

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.,
                       custom_keys={'pos_embed': dict(decay_mult=0.), 'cls_token': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
