"""Measure (never assert) the person-detection stage and the flip-test cost on this machine.

    python -m poseloop.bench.detect [--threads 2] [--repeat 20] [--model artifacts/lsp14-mbv2-128x96/v1/model.onnx]

Reports medians in ms: the detector alone (letterbox + ONNX Runtime + GFL decode/NMS) on the shared wild/ images
and LSP im0801–0820, then the pose stage on the detected persons of each wild image without and with flip test,
and the whole detector + pose path per image. Needs ../shared/datasets (or $POSELOOP_DATA).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from serving.backends.detector import embedded_detector
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PoseOptions, PosePipeline

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "artifacts" / "detector-nanodet-g-416" / "model.onnx"
POSE = REPO / "artifacts" / "lsp14-mbv2-128x96" / "v1" / "model.onnx"


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--model", type=Path, default=POSE)
    args = parser.parse_args()
    from training.datasets import default_data_root  # the dataset root convention (bench only, not serving)

    data = default_data_root()
    detector = embedded_detector(DETECTOR, intra_op_threads=args.threads)
    backend = OnnxRuntimeBackend(args.model, intra_op_threads=args.threads)
    pipeline = PosePipeline(backend, detector=detector)
    wild = [data / "wild" / n for n in ("basketball1.png", "basketball2.png", "messi5.jpg")]
    lsp = [data / "lsp" / "images" / f"im{i:04d}.jpg" for i in range(801, 821)]
    print(f"threads {args.threads}, median of {args.repeat} runs; pose model {args.model}")
    det_ms = []
    for path in wild + lsp:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        det_ms.append(median_ms(partial(detector.detect, image, 0.35, 20), args.repeat))
    print(
        f"detector alone: median {statistics.median(det_ms):.1f} ms over {len(det_ms)} images "
        f"(min {min(det_ms):.1f}, max {max(det_ms):.1f})"
    )
    print(f"{'image':18s} {'persons':>7s} {'pose':>8s} {'pose+flip':>10s} {'det+pose':>9s} {'det+pose+flip':>14s}")
    for path in wild:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        boxes = detector.detect(image, 0.35, 20).boxes
        cases: list[tuple[np.ndarray | None, PoseOptions]] = [
            (boxes, PoseOptions(flip=False)),
            (boxes, PoseOptions(flip=True)),
        ]
        cases += [(None, PoseOptions(detect=True, flip=False)), (None, PoseOptions(detect=True, flip=True))]
        figures = [median_ms(partial(pipeline.predict, image, b, o), args.repeat) for b, o in cases]
        plain, flip, full, full_flip = figures
        print(f"{path.name:18s} {len(boxes):7d} {plain:8.1f} {flip:10.1f} {full:9.1f} {full_flip:14.1f}")


if __name__ == "__main__":
    main()
