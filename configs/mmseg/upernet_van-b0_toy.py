# VAN-B0 UperNet on the built-in toy set (CPU, minutes): bash tools/dev.sh seg, or
# python tools/mm_train.py upernet_van-b0_toy. Measured results: docs/mm.md.
_base_ = './_base_/upernet_vimzoo_toy.py'

model = dict(
    backbone=dict(model_name='van_b0'),
    decode_head=dict(in_channels=[32, 64, 160, 256]),
    auxiliary_head=dict(in_channels=160))
