"""One training run for tests/test_distributed.py: plain (`python tests/ddp_run.py …`) or under torchrun.

Each rank writes its method's parameters to OUT/rank<R>.pt, so the test can check the ranks stayed identical.
"""

import sys
from pathlib import Path

import torch

from training import distributed
from training.config import load_config
from training.engine import Trainer


def main(out: str, method: str, iterations: int) -> None:
    overrides = [
        f"name={method}",
        f"output_dir={out}",
        "model.pretrained=false",
        "data.input_h=96",
        "data.input_w=64",
        "data.label_budget=16",
        "optim.batch_size=8",
        f"optim.iterations={iterations}",
        "schedule.log_every=1",
        "schedule.val_every=1000",
        "schedule.checkpoint_every=1000",
        f"method.name={method}",
    ]
    if method != "supervised":
        overrides += ["data.unlabeled=lspet", "data.unlabeled_limit=32"]
    trainer = Trainer(load_config("configs/quick.yaml", overrides), device="cpu")
    trainer.splits = trainer.splits.__class__(
        trainer.splits.train, trainer.splits.val[:8], trainer.splits.schema, trainer.splits.description
    )
    initial = {f"init:{k}": p.detach().clone() for k, p in trainer.method.student.named_parameters()}
    trainer.fit(progress=False)
    params = {k: p.detach().clone() for k, p in trainer.method.named_parameters()}
    params.update({f"buffer:{k}": b.detach().clone() for k, b in trainer.method.named_buffers()})
    params.update(initial)
    torch.save(params, Path(out) / f"rank{trainer.dist.rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
