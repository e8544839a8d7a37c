"""`torchrun ... -m tests.gpu.fit_probe PROBE.json fit ...`: `python -m training fit ...`, with what it chose written to
PROBE.json by rank 0 (the process group's backend and device, each optimizer's class, fused flag and parameter
devices), so that `make test-gpu` can check that the run used NCCL, CUDA and the fused kernel."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    probe, argv = Path(argv[0]), argv[1:]
    import torch

    from training import distributed, trainer
    from training.__main__ import main as training_main

    record: dict = {"rank": int(os.environ.get("RANK", "0")), "torch": torch.__version__,
                    "cuda_available": torch.cuda.is_available(), "process_group": None, "optimizers": []}
    joined = distributed.from_environment
    make_optimizer = trainer.make_optimizer

    def from_environment(*args, **kwargs):
        group = joined(*args, **kwargs)
        if group is not None:
            record["process_group"] = {"backend": group.backend, "device": str(group.device),
                                       "world_size": group.world_size,
                                       "torch_backend": str(torch.distributed.get_backend())}
        return group

    def recording_optimizer(cfg, params):
        params = list(params)
        optimizer = make_optimizer(cfg, params)
        record["optimizers"].append({"class": type(optimizer).__name__,
                                     "fused": bool(optimizer.defaults.get("fused")),
                                     "devices": sorted({str(p.device) for p in params})})
        return optimizer

    distributed.from_environment = from_environment
    trainer.make_optimizer = recording_optimizer
    try:
        return training_main(argv)
    finally:
        if record["rank"] == 0:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
