# LBVim-T UperNet (official: cvlab-stonybrook/LBMamba segmentation/model.py `Backbone_BiVisionMamba`): out_indices
# [5, 11, 17, 23], each output through LBVim's own LayerNorm (added by the backbone), then the Vim-seg pyramid and
# UperNet recipe (the LBMamba ADE20K configs were not reachable; Vim-seg's hyper-parameters are used).
_base_ = './_base_/upernet_vimzoo-isometric_ade20k.py'

model = dict(backbone=dict(model_name='lbvim_tiny_patch16_224', out_indices=[5, 11, 17, 23], drop_path_rate=0.1))
