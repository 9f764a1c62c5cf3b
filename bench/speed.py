"""Training-step cost, as ratios measured in one run (interleaved repeats, medians).

1. A CPFD student step vs a plain (baseline) student step, both reading cached teacher outputs (target ≤ 1.10).
2. A student step reading cached teacher outputs vs one that runs the frozen teacher every step (target ≥ 3×).

Data: the Fashion-MNIST benchmark table (49 student features, 784 privileged). Steps are forward + loss +
backward + AdamW update on the same batches.

    python bench/speed.py [--batch-size 256] [--steps 30] [--repeats 7] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import fashion_mnist  # noqa: E402

from cpfd.config import load_config  # noqa: E402
from cpfd.data import load_dataset  # noqa: E402
from cpfd.distill.losses import build_loss  # noqa: E402
from cpfd.distill.task import CachedTeacher, DistillTask, OnlineTeacher  # noqa: E402
from cpfd.models.build import build_student, load_teacher  # noqa: E402
from cpfd.train.batches import RowDataset  # noqa: E402
from cpfd.train.loop import make_fabric, to_device  # noqa: E402
from cpfd.train.schedule import fit_teacher  # noqa: E402
from cpfd.train.teacher_outputs import teacher_targets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=fashion_mnist.ROOT)
    args = parser.parse_args()
    folder = fashion_mnist.OUT / "fmnist_1000" / "data"
    if not (folder / "dataset.yaml").exists():
        folder = fashion_mnist.build(1000, 10000, 1000, root=args.data_dir)
    data = load_dataset(folder)
    cfg = load_config(overrides=["train.progress=false", "train.epochs=5", "train.min_steps=0"])
    teacher_dir = folder.parent / "speed_teacher"
    if not (teacher_dir / "checkpoints" / "best.safetensors").exists():
        fit_teacher(data, cfg, teacher_dir, make_fabric(cfg.train))
    targets = teacher_targets(teacher_dir, data)
    device = torch.device(args.device)
    types = {t.name: t.kind for t in data.tasks}
    teacher = load_teacher(teacher_dir, data).to(device)
    cached_set = RowDataset(data, data.indices("train"))
    online_set = RowDataset(data, data.indices("train"), with_privileged=True)
    gen = torch.Generator().manual_seed(0)
    picks = [torch.randint(len(cached_set), (args.batch_size,), generator=gen).tolist() for _ in range(args.steps)]
    cached = [to_device(cached_set.__getitems__(p), device) for p in picks]
    online_batches = [to_device(online_set.__getitems__(p), device) for p in picks]

    def runner(method: str, online: bool):
        # As in `cpfd distill`: one DistillTask; confidences are computed once per run in cached mode (prepare),
        # per batch from the frozen teacher in online mode.
        torch.manual_seed(0)
        student = build_student(data, cfg).to(device).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
        loss_fn = build_loss(cfg.distill.model_copy(update={"method": method}), types, targets.temperatures)
        source = OnlineTeacher(teacher, targets) if online else CachedTeacher(targets)
        task = DistillTask(student, loss_fn, source)
        task.prepare(data.labels, data.label_mask)

        def run() -> None:
            for batch in online_batches if online else cached:
                loss = task(batch)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    arms = {"baseline (cached)": runner("none", False), "cpfd (cached)": runner("cpfd", False),
            "cpfd (online teacher)": runner("cpfd", True)}
    times = {name: [] for name in arms}
    for fn in arms.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in arms.items():
            tic = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - tic) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device={device} batch={args.batch_size} steps={args.steps} repeats={args.repeats} "
          f"threads={torch.get_num_threads()}")
    for name, t in med.items():
        print(f"  {name:24s} median {1000 * t:8.3f} ms/step")
    print(f"CPFD step / plain step (both cached): {med['cpfd (cached)'] / med['baseline (cached)']:.3f}  (target <= 1.10)")
    print(f"online-teacher step / cached step:    {med['cpfd (online teacher)'] / med['cpfd (cached)']:.3f}  "
          f"(target >= 3 for 'cached is 3x faster')")


if __name__ == "__main__":
    main()
