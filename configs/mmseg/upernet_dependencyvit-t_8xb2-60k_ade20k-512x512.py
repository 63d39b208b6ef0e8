# DependencyViT-Ti UperNet. No official code or weights exist (paper re-implementation): the isometric Vim-seg recipe
# (blocks 2/5/8/11 -> simple pyramid, UPerHead 192 ch, AdamW 1e-4 + layer decay 0.92, slide test).
_base_ = './_base_/upernet_vimzoo-isometric_ade20k.py'

model = dict(backbone=dict(model_name='dependencyvit_tiny_patch16_224', out_indices=[2, 5, 8, 11],
                           drop_path_rate=0.1))
