"""Run under `torchrun --nproc_per_node 2` by tests/test_ddp.py; each process saves what it saw.

    _ddp_worker.py first OUT     the gradients of `GRAD_CASES` through `shard_loss`; a CTKD + DIST
                                 cohort trained straight (OUT/straight), and one stopped after epoch 1
                                 (OUT/resumed)
    _ddp_worker.py resume OUT    the stopped one, resumed from its checkpoints in a new process group
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from kdbench import methods, models
from kdbench.train import distributed
from kdbench.grid.recipe import Schedule
from kdbench.runs.teacher_files import TeacherRef, TeacherSource
from kdbench.train.cohort import CohortSpec, train_cohort
from kdbench.train.trainee import Member, Trainee, shard_loss

# (method, global batch): odd batches give shares of 4 and 3 rows.
GRAD_CASES = [("dist", 8), ("dist", 7), ("mlkd", 8), ("mlkd", 7), ("label_revision", 7), ("kd", 7), ("ctkd", 7)]
CLASSES, EPOCH = 10, 3
SPEC = {"name": "synthetic", "num_classes": 10, "train_size": 62, "test_size": 32, "image_size": 16, "channels": 3}
BATCH = 31  # 2 steps an epoch, each split 16 + 15 over two processes


def grad_inputs(name: str, rows: int) -> tuple[dict, dict, torch.Tensor]:
    """The global batch of a case, the same on every process (and in the test): float64 logits per view."""
    g = torch.Generator().manual_seed(rows)
    views = methods.views_of(methods.method_class(name)) or (None,)
    student = {v: torch.randn(rows, CLASSES, generator=g, dtype=torch.float64) * 3 for v in views}
    teacher = {v: torch.randn(rows, CLASSES, generator=g, dtype=torch.float64) * 3 for v in views}
    return student, teacher, torch.randint(0, CLASSES, (rows,), generator=g)


def unwrap(logits: dict) -> object:
    return logits[None] if list(logits) == [None] else logits


def grads(out: Path) -> None:
    results = {}
    for name, rows in GRAD_CASES:
        student, teacher, targets = grad_inputs(name, rows)
        shares = distributed.share_sizes(rows)
        start = sum(shares[:distributed.rank()])
        mine = slice(start, start + shares[distributed.rank()])
        local = {v: x[mine].clone().requires_grad_(True) for v, x in student.items()}
        method = methods.build(name).double()
        _, _, backprop = shard_loss(method, methods.batch_statistics(method), unwrap(local),
                                    unwrap({v: x[mine] for v, x in teacher.items()}), targets[mine], shares, EPOCH)
        backprop.backward()
        # DDP averages the processes' parameter gradients, which are linear in the logits'
        # gradients: the average of the logits' gradients, laid side by side, is what it applies.
        world = distributed.world_size()
        distributed.average_gradients(list(method.parameters()))
        results[(name, rows)] = {
            "student": {v: distributed.gather(x.grad / world, shares) for v, x in local.items()},
            "params": {p: param.grad for p, param in method.named_parameters()}}
    torch.save(results, out / f"grads_rank{distributed.rank()}.pt")


def train(out: Path, tag: str, until: int | None) -> None:
    made: list[Trainee] = []
    init = Trainee.__init__

    def recording_init(self: Trainee, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    torch.manual_seed(123)
    teacher = models.build("resnet8", num_classes=10).eval()
    schedule = Schedule(epochs=2, batch_size=BATCH, lr=0.05, milestones=(1,))
    members = [Member(run_id=name, student="resnet8", method=name, hparams={}, schedule=schedule,
                      out_dir=out / tag / name, config={"method": name}) for name in ("ctkd", "dist")]
    cohort = CohortSpec(dataset=SPEC, seed=0, members=members, teacher=TeacherRef("resnet8", TeacherSource.FILE, None),
                        teacher_model=teacher)
    Trainee.__init__ = recording_init  # type: ignore[method-assign]
    try:
        results = train_cohort(cohort, "cpu", until_epoch=until)
    finally:
        Trainee.__init__ = init  # type: ignore[method-assign]
    suffix = "first" if until else "final"
    torch.save({t.run_id: {"method": t.method.state_dict(), "model": t.model.state_dict(),
                           "optimizer": t.optimizer.state_dict()["state"], "history": r.history}
                for t, r in zip(made, results)}, out / f"{tag}_{suffix}_rank{distributed.rank()}.pt")


def main() -> None:
    torch.set_num_threads(1)
    distributed.init("cpu")
    out = Path(sys.argv[2])
    if sys.argv[1] == "first":
        grads(out)
        train(out, "straight", None)
        train(out, "resumed", 1)
    else:
        train(out, "resumed", None)
    distributed.shutdown()


if __name__ == "__main__":
    main()
