"""Networks, keypoint schemas, heatmap codec, geometry and ONNX export.

Importing this package (or `models.schemas`, `models.codec`, `models.geometry`) never imports torch:
the serving process relies on that. Torch lives in `models.backbones`, `models.heads`, `models.network`
and `models.export`.
"""
