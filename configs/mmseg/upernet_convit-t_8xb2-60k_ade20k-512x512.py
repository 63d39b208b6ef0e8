# ConViT-Ti UperNet. No official dense code: the isometric Vim-seg recipe (blocks 2/5/8/11 -> simple pyramid,
# UPerHead 192 ch, AdamW 1e-4 + layer decay 0.92, slide test). dynamic_img_size=True lets ConViT take any crop.
_base_ = './_base_/upernet_vimzoo-isometric_ade20k.py'

model = dict(backbone=dict(model_name='convit_tiny', out_indices=[2, 5, 8, 11], dynamic_img_size=True,
                           drop_path_rate=0.1))
