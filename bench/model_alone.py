"""Training throughput from the memory-mapped store as a fraction of the model alone (ratios in one run).

*Model alone*: CPFD student steps (forward + loss + backward + AdamW) on batches gathered before the clock starts.
*From the store*: the same steps, each batch gathered from the memory-mapped store through the DataLoader and
sampler `cpfd distill` uses (shuffled rows over the whole train split). Both run in this process, interleaved,
median of the repeats; the ratio is the share of the model's speed that training keeps (target ≥ 0.70).

    python bench/model_alone.py bench/out/scale/data-1000000 bench/out/scale/runs-1000000/teacher \
        [--batch-size 256] [--steps 200] [--repeats 5]

Run ``bench/scale.py --keep`` first: it leaves the dataset, its store and the teacher run. For the video-shaped
store of ``bench/scale_video.py --keep``, pass its extraction settings with ``--set`` (they are part of the
store's key).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cpfd.config import load_config
from cpfd.data import load_dataset
from cpfd.distill.losses import build_loss
from cpfd.distill.task import CachedTeacher, DistillTask
from cpfd.models.build import build_student
from cpfd.train.batches import RowDataset, ShuffledShard, passthrough
from cpfd.train.teacher_outputs import teacher_targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("teacher", type=Path)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--release-every", type=int, default=0,
                    help="batches between hand-backs of store pages (train.release_pages_every; 0: the default)")
    ap.add_argument("--block-rows", type=int, default=1,
                    help="shuffle runs of this many consecutive rows (train.shuffle_block_rows; 1: the default)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="config override, e.g. extract.max_tokens=32")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = load_config(overrides=args.sets)
    data = load_dataset(args.dataset, log=lambda m: None, extract=cfg.extract)
    targets = teacher_targets(args.teacher, data, log=lambda m: None)
    types = {t.name: t.kind for t in data.tasks}
    student = build_student(data, cfg).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    task = DistillTask(student, build_loss(cfg.distill, types, targets.temperatures), CachedTeacher(targets))
    task.prepare(data.labels, data.label_mask)
    train = data.indices("train")
    dataset = RowDataset(data, train, release_every=args.release_every)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=ShuffledShard(len(dataset), block_rows=args.block_rows),
                        collate_fn=passthrough, num_workers=cfg.train.num_workers)
    stream = iter(loader)
    preallocated = [next(stream) for _ in range(args.steps)]

    def step(batch: dict) -> None:
        loss = task(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def model_alone() -> float:
        tic = time.perf_counter()
        for batch in preallocated:
            step(batch)
        return args.steps * args.batch_size / (time.perf_counter() - tic)

    def from_store() -> float:
        nonlocal stream
        tic = time.perf_counter()
        for _ in range(args.steps):
            try:
                batch = next(stream)
            except StopIteration:
                stream = iter(loader)
                batch = next(stream)
            step(batch)
        return args.steps * args.batch_size / (time.perf_counter() - tic)

    model_alone(), from_store()  # warm-up: allocator, page cache of the touched rows
    alone, store = [], []
    for _ in range(args.repeats):
        alone.append(model_alone())
        store.append(from_store())
    result = {
        "rows": len(data), "train_rows": len(train), "batch_size": args.batch_size, "steps": args.steps,
        "repeats": args.repeats, "threads": torch.get_num_threads(), "release_every": args.release_every,
        "block_rows": args.block_rows, "sets": args.sets,
        "model_alone_rows_per_s": round(statistics.median(alone)),
        "from_store_rows_per_s": round(statistics.median(store)),
        "fraction": round(statistics.median(s / a for s, a in zip(store, alone)), 3),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
