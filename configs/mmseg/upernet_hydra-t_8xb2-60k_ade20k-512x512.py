# Hydra-T UperNet. Hydra has no official segmentation code or weights: the isometric Vim-seg recipe (blocks
# 2/5/8/11 -> simple pyramid, UPerHead 192 channels, AdamW 1e-4 + layer decay 0.92, 60k iterations, slide test).
# dynamic_img_size: the sliding-window crops and the val images differ from 224, the position embedding is resampled.
_base_ = './_base_/upernet_vimzoo-isometric_ade20k.py'

model = dict(backbone=dict(model_name='hydra_tiny_patch16_224', out_indices=[2, 5, 8, 11], drop_path_rate=0.1,
                           dynamic_img_size=True))
