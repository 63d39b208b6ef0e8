# Mask R-CNN on the built-in toy set `shapes-coco` (generated on first use, COCO layout, 4 shape classes on 128x128
# images) with a vimzoo backbone: a slimmed-down mmdet Mask R-CNN (64-channel FPN, anchors from 16 px, 128 sampled
# RoIs) that trains from scratch on a CPU in minutes. Run it with tools/mm_train.py, which generates the data;
# `--data-root DIR` trains the same model on any folder in COCO layout.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py']

custom_imports = dict(imports=['vimzoo.mm'], allow_failed_imports=False)

classes = ('rectangle', 'ellipse', 'triangle', 'cross')
num_classes = len(classes)
data_root = 'vimzoo-toy:shapes-coco/'
image_size = (128, 128)
fpn_channels = 64

model = dict(
    backbone=dict(
        _delete_=True,
        type='VimZooBackbone',
        model_name='',  # set by the backbone config
        pretrained=False),
    neck=dict(in_channels=[], out_channels=fpn_channels),  # in_channels = backbone out_channels (backbone config)
    rpn_head=dict(
        in_channels=fpn_channels, feat_channels=fpn_channels,
        anchor_generator=dict(scales=[4])),  # 16 px anchors at stride 4 ... 256 px at stride 64
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=fpn_channels),
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=256, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=fpn_channels),
        mask_head=dict(in_channels=fpn_channels, conv_out_channels=fpn_channels, num_classes=num_classes)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
dataset = dict(type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(dataset, ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=4), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=10.))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=1e-5),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=4)
