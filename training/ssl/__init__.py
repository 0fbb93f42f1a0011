"""Semi-supervised building blocks that the methods in `training.methods` compose.

- `training.ssl.augment`: the shared easy→hard affine (image and heatmaps warped by one θ) and the batched
  hard-view augmentations (Joint Cutout, Cut-Occlude, Cutout, CutMix, MixUp, Keypoint-Mix, adaptive keypoint
  masking, photometric jitter), plus named composite paths for configs.
- `training.ssl.pseudo`, `training.ssl.teachers`, `training.ssl.monitor`: pseudo-heatmap processing, teacher
  networks and collapse monitoring.

Conventions: images (N, 3, H, W) normalised; joints (N, K, 2) in input pixels, (x, y) = (column, row);
heatmap stride 4 (heatmap pixel u ↔ input pixel 4u); every random draw comes from an explicit torch.Generator.
"""
