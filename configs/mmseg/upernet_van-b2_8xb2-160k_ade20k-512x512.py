# VAN-B2 UperNet 160k (official: Visual-Attention-Network/VAN-Segmentation, upernet_van.py + van_b2 config, reported
# 50.1 mIoU ms): UPerHead channels 512, FCN aux on stage 3, AdamW 6e-5 wd 0.01, 1500-iter warmup, poly, 160k,
# 2 images/GPU x 8, drop_path 0.1 (B0-B2). Stage outputs come after VAN's per-stage LayerNorm (no extra norm).
_base_ = './_base_/upernet_vimzoo_160k_ade20k.py'

model = dict(
    backbone=dict(model_name='van_b2', drop_path_rate=0.1),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
