"""One chunk of a retrain's training stage on several GPUs: run under torchrun by `continual.retrain` when
`train_nproc` > 1. Rank 0 writes the run directory (checkpoints, metrics.jsonl) exactly as an in-process chunk does,
and the summary the job records to `--result`; the parent process turns metrics.jsonl rows into heartbeats.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def records_to_json(records) -> list[dict]:
    return [
        {
            "image_path": str(r.image_path),
            "box": np.asarray(r.box).tolist(),
            "schema": r.schema,
            "record_id": r.record_id,
        }
        for r in records
    ]


def records_from_json(rows: list[dict]):
    from training.datasets.records import PersonRecord

    return [
        PersonRecord(
            image_path=Path(r["image_path"]),
            box=np.asarray(r["box"], np.float32),
            keypoints=None,
            visibility=None,
            schema=r["schema"],
            record_id=r["record_id"],
        )
        for r in rows
    ]


def main(argv: list[str] | None = None) -> None:
    from training import distributed
    from training.config import TrainConfig
    from training.engine import Trainer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig as JSON")
    parser.add_argument("--records", type=Path, required=True, help="unlabeled records as JSON")
    parser.add_argument("--init", required=True, help="checkpoint the run starts from")
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    config = TrainConfig.model_validate(json.loads(args.config.read_text()))
    records = records_from_json(json.loads(args.records.read_text()))
    trainer = Trainer(config, unlabeled=records, init_checkpoint=args.init)
    out = trainer.fit(resume=True, progress=False, stop_after=args.stop_after)
    distributed.shutdown()
    if trainer.dist.is_main:
        args.result.write_text(json.dumps(out.summary()))


if __name__ == "__main__":
    main()
