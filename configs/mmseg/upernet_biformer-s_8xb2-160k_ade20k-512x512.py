# BiFormer-S UperNet 160k (official: rayleizhu/BiFormer semantic_segmentation/configs/ade20k/upernet.biformer_small.py,
# reported 49.8 mIoU / 50.8 ms+flip): n_win=8 ("training resolution is 512"), drop_path 0.3, AdamW 6e-5 wd 0.01,
# poly, 160k, 2 images/GPU, fp16 (loss scale 512). Per-level LayerNorm2d (eps 1e-6) is added by the backbone.
_base_ = './_base_/upernet_vimzoo_160k_ade20k.py'

model = dict(
    backbone=dict(model_name='biformer_small', n_win=8, drop_path_rate=0.3),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
