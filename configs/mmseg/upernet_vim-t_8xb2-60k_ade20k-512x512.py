# Vim-T UperNet (official: hustvl/Vim seg/configs/vim/upernet/upernet_vim_tiny_24_512_slide_60k.py): out_indices
# [5, 11, 17, 23] (mixer/residual stream of those layers), fpn1-4 pyramid, UPerHead 192 channels, AdamW 1e-4 wd 0.05,
# layer decay 0.92 over 24 layers, 60k iters, slide test. Vim-T has no class token in that config; the zoo model has
# one (it is dropped from the maps), which only changes the classification-pretrained pos_embed layout.
_base_ = './_base_/upernet_vimzoo-isometric_ade20k.py'

model = dict(backbone=dict(model_name='vim_tiny_patch16_224', out_indices=[5, 11, 17, 23], drop_path_rate=0.1))
