"""Before/after previews for the ops console's models page: a stored upload drawn with the poses of any version
on disk, not only the served one, so an operator can look at a candidate next to its parent before promoting it.

A preview never touches the serving backend (Triton or embedded) or what serves: each previewed version gets its
own ONNX Runtime session on its registry file (one thread), and the last PREVIEW_SESSIONS of them are kept, so a
page comparing two versions loads each once. Uploads without boxes go through the serving backend's person
detector when it has one, as /v1/pose does; the drawing is downscaled to PREVIEW_SIDE for the page.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

from continual.uploads import UploadRecord
from models.registry import ModelRegistry, RegistryError
from serving.backends import BackendLoadError
from serving.pipeline import PosePipeline, load_image_rgb
from serving.render import render_poses

PREVIEW_SESSIONS = 2  # a before/after pair
PREVIEW_SIDE = 640  # longest side of a preview image, px
JPEG_QUALITY = 88


class VersionPreviews:
    """Renders of uploads by version (thread-safe; sessions are built outside the lock)."""

    def __init__(self, registry: ModelRegistry, detector=None, sessions: int = PREVIEW_SESSIONS) -> None:
        self.registry, self.detector, self.sessions = registry, detector, sessions
        self._pipelines: OrderedDict[str, PosePipeline] = OrderedDict()
        self._lock = threading.Lock()

    def pipeline(self, version: str) -> PosePipeline:
        """The version's preview pipeline. VersionNotFound (unknown), RegistryError (pruned: no files),
        BackendLoadError (its ONNX does not load)."""
        with self._lock:
            if version in self._pipelines:
                self._pipelines.move_to_end(version)
                return self._pipelines[version]
        info = self.registry.get(version)
        if not info.on_disk:
            raise RegistryError(f"version {version} has no files on disk (pruned): nothing to preview")
        from serving.backends.onnxruntime import OnnxRuntimeBackend

        try:
            pipeline = PosePipeline(OnnxRuntimeBackend(info.onnx_path, intra_op_threads=1), detector=self.detector)
        except Exception as err:  # a file the registry holds but ONNX Runtime refuses
            raise BackendLoadError(f"version {version}: {type(err).__name__}: {err}") from err
        with self._lock:
            self._pipelines[version] = pipeline
            while len(self._pipelines) > self.sessions:
                self._pipelines.popitem(last=False)
        return pipeline

    def render(self, version: str, record: UploadRecord) -> bytes:
        """JPEG of `record` (its boxes, else detected persons or the whole image) with `version`'s poses."""
        pipeline = self.pipeline(version)
        rgb = load_image_rgb(record.path.read_bytes())
        poses = pipeline.predict(rgb, record.boxes)
        h, w = rgb.shape[:2]
        scale = min(1.0, PREVIEW_SIDE / max(h, w))
        if scale < 1.0:
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            poses = [p.rescaled(rgb.shape[1] / w, rgb.shape[0] / h) for p in poses]
        overlay = render_poses(rgb, poses, pipeline.backend.metadata.schema.skeleton)
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise ValueError("JPEG encoding of the preview failed")
        return np.asarray(jpeg).tobytes()
