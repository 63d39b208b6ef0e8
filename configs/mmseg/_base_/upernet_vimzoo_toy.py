# UperNet on the built-in toy set `shapes-ade` (generated on first use, ADE20K layout: background + 4 shape classes
# on 128x128 images) with a vimzoo backbone: mmseg's UperNet with 64-channel heads, trained from scratch on a CPU in
# minutes. Run it with tools/mm_train.py, which generates the data; `--data-root DIR` trains the same model on any
# folder in ADE20K layout (images/{training,validation}, annotations/{training,validation}).
_base_ = ['mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/default_runtime.py']

custom_imports = dict(imports=['vimzoo.mm'], allow_failed_imports=False)

classes = ('background', 'rectangle', 'ellipse', 'triangle', 'cross')
palette = [[0, 0, 0], [220, 20, 60], [0, 130, 200], [60, 180, 75], [255, 225, 25]]
data_root = 'vimzoo-toy:shapes-ade/'
crop_size = (128, 128)
head_channels = 64

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='VimZooBackbone',
        model_name='',  # set by the backbone config
        pretrained=False),
    decode_head=dict(in_channels=[], channels=head_channels, num_classes=len(classes)),  # = backbone out_channels
    auxiliary_head=dict(in_channels=0, channels=head_channels // 2, num_classes=len(classes)))  # = out_channels[2]

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),  # ADE20K convention: 0 = unlabelled (ignored)
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=dict(classes=classes, palette=palette),
               img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=1, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=10.))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=1e-5, power=1.0, by_epoch=False, begin=50, end=max_iters),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
