"""Training throughput of the Dataset path against the tensor path, side by side.

The same data (N x 64 float features, 10 classes: the size of scikit-learn's digits) and the
same 2-hidden-layer MLP train in critbatch's shared loop (:func:`trainables.loop.train_supervised`,
SGD, no eval in the timed window) with the data handed over three ways:

- **tensors**: ``Task.batches = (x, y)``: the tensors live on the device and a batch is one
  gather there (:class:`trainables.batches.TensorBatches`);
- **dataset, 0 workers**: a map-style ``torch.utils.data.Dataset`` read item by item in the
  training process and collated (:class:`trainables.batches.DatasetBatches`);
- **dataset, W workers**: the same Dataset read ahead by ``--workers`` DataLoader processes.

Every variant runs the same steps from the same seed (they draw identical batches); the rate
is examples per second of whole training steps. Run all variants in one process so they share
the machine's load: report the ratios.

    .venv/bin/python benchmarks/dataset_path.py                       # CPU, B = 32, 256, 2048
    .venv/bin/python benchmarks/dataset_path.py --device cuda
    .venv/bin/python benchmarks/dataset_path.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from trainables.api import Target, TrialConfig
from trainables.loop import Task, train_supervised
from trainables.registry import Workload


class Points(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _workload(variant: str, workers: int, n: int) -> Workload:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)

    def build(config: TrialConfig, device: torch.device) -> Task:
        model = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        )
        batches = (x, y) if variant == "tensors" else Points(x, y)
        return Task(model, batches, lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                    lambda m: {"eval_loss": 0.0}, n,
                    data_workers=None if variant == "tensors" else workers)  # fmt: skip

    return Workload(name=f"bench-{variant}", description="", metrics={"eval_loss": "min"},
                    default_target=Target(), build=build)  # fmt: skip


def examples_per_s(
    variant: str, workers: int, batch_size: int, steps: int, device: str, n: int
) -> float:
    """Examples/s of ``steps`` training steps, timed between the first and the last report."""
    w = _workload(variant, workers, n)
    cfg = TrialConfig(workload=w.name, batch_size=batch_size, lr=0.01, max_steps=steps + 1,
                      eval_every=1, device=device, target=Target("eval_loss", -1.0))  # fmt: skip
    times: list[float] = []
    train_supervised(w, cfg, lambda m, c=None: times.append(time.perf_counter()))
    return batch_size * (len(times) - 1) / (times[-1] - times[0])  # step 1 (start-up) untimed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="32,256,2048")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n", type=int, default=1797, help="training examples")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--smoke-test", action="store_true")
    args = p.parse_args()
    if args.smoke_test:
        args.batch_sizes, args.steps = "32", 5
    torch.set_num_threads(args.threads)
    rows = []
    for b in map(int, args.batch_sizes.split(",")):
        rate = {
            "tensors": examples_per_s("tensors", 0, b, args.steps, args.device, args.n),
            "dataset_0": examples_per_s("dataset", 0, b, args.steps, args.device, args.n),
            f"dataset_{args.workers}": examples_per_s(
                "dataset", args.workers, b, args.steps, args.device, args.n
            ),
        }
        rows.append({"batch_size": b, **{k: round(v) for k, v in rate.items()},
                     **{f"{k}/tensors": round(v / rate["tensors"], 3) for k, v in rate.items() if k != "tensors"}})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"device": args.device, "torch": torch.__version__, "cpus": torch.multiprocessing.cpu_count(),
                      "machine": platform.machine(), "steps": args.steps, "threads": args.threads}))  # fmt: skip


if __name__ == "__main__":
    main()
