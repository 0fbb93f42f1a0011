"""Batched easy→hard augmentations for semi-supervised pose training (torch, on the inputs' device).

Tensors: images (N, 3, H, W) normalised, so 0 is the dataset mean colour (the fill value); heatmaps (N, K, h, w);
joints (N, K, 2) in INPUT pixels of those images, (x, y) = (column, row); `valid` (N, K) bool/float, invalid (or
non-finite) joints are never chosen. Spatial sizes are read only as `h, w = x.shape[-2:]`; sizes are (w, h).

Size convention: every length an augmentation takes is RELATIVE to the crop, a fraction of the shorter side
s = min(h, w) of the tensor being augmented, converted to pixels inside each call, so the occluded share of the
crop (and of its joints) is the same at 128×96 as at 256×192. Parameter names say so: `half_size_frac` is an
inclusive (lo, hi) range of box half-sizes, and integer half-sizes are drawn uniformly in [round(lo·s),
round(hi·s)] px (nearest integer, ties down, never below 1 px; a box is 2·half + 1 px wide); `jitter_frac` is
Joint Cutout's centre jitter, σ = jitter_frac·s px. The defaults are the papers' pixel values at 256×192 divided
by 192: HALF_SIZE_FRAC = (10/192, 19/192), i.e. 10–19 px at 256×192 and 5–9 px at 128×96; JITTER_FRAC = 10/192,
i.e. σ = 10 px resp. 5 px. `half_size_px(frac, x.shape[-2:])` gives the pixel range a crop gets. Joints and box
centres stay in input pixels (positions, not sizes).

Every random draw comes from the explicit `generator` (a CPU generator, or one on the inputs' device); draws are
made on the generator's device and moved, so a seed gives the same result whatever the data. Nothing here
modifies its inputs.

Modules (every public name is re-exported here, so `from training.ssl.augment import warp` keeps working):
- `affine`: the shared random affine θ that warps a hard view's image and its target heatmaps alike, and the
  coordinate convention that keeps the two aligned;
- `masking`: occlusion by zeroed boxes (Joint Cutout, Adaptive Keypoint Masking, Cutout);
- `mixing`: occlusion by pixels of another image of the batch (Cut-Occlude, Keypoint-Mix, CutMix, MixUp);
- `colour`: photometric jitter;
- `paths`: the registry of named augmentations and the "+"-joined paths that method configs name;
- `_sampling`: random draws, joint choice, box masks and the size convention (fractions → px) shared by the above.
"""

from training.ssl.augment._sampling import HALF_SIZE_FRAC, JITTER_FRAC, REFERENCE_SIDE, HalfSizeFrac, half_size_px
from training.ssl.augment.affine import affine_theta, random_affine, warp, warp_points
from training.ssl.augment.colour import photometric
from training.ssl.augment.masking import adaptive_keypoint_mask, cutout, joint_cutout, relative_responses
from training.ssl.augment.mixing import cut_occlude, cutmix, keypoint_mix, mixup
from training.ssl.augment.paths import AUGMENTS, AugmentPath, AugmentSpec, apply_path, check_path

__all__ = [
    "AUGMENTS",
    "HALF_SIZE_FRAC",
    "JITTER_FRAC",
    "REFERENCE_SIDE",
    "AugmentPath",
    "AugmentSpec",
    "HalfSizeFrac",
    "adaptive_keypoint_mask",
    "affine_theta",
    "apply_path",
    "check_path",
    "cut_occlude",
    "cutmix",
    "cutout",
    "half_size_px",
    "joint_cutout",
    "keypoint_mix",
    "mixup",
    "photometric",
    "random_affine",
    "relative_responses",
    "warp",
    "warp_points",
]
