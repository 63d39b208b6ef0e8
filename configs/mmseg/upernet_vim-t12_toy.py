# Vim-Ti with 12 of its 24 blocks, UperNet on the built-in toy set (CPU, minutes):
# python tools/mm_train.py upernet_vim-t12_toy. Block outputs 2/5/8/11 feed the simple pyramid (strides 4-32).
# Measured results: docs/mm.md.
_base_ = './_base_/upernet_vimzoo_toy.py'

model = dict(
    backbone=dict(model_name='vim_tiny_patch16_224', depth=12),
    decode_head=dict(in_channels=[192, 192, 192, 192]),
    auxiliary_head=dict(in_channels=192))
