"""One ELSA training step two ways: the Gram form of the loss (``training.fit.linear.elsa_task.elsa_loss``,
``O(nnz x rank + items x rank^2)``, nothing items-wide) and the textbook dense form (the
``batch x items`` prediction ``x A A^T - x`` and ELSA's normalised MSE over it), forward + backward +
Adam on random binary user rows. Prints seconds per step and the largest tensor each form builds.

    python -m benchmarks.elsa_step --items 12101 --rank 256 --batch 128 --per-user 9
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from training.fit.linear.elsa_task import ElsaBatch, elsa_loss


def random_batch(items: int, batch: int, per_user: int, rng: np.random.Generator) -> ElsaBatch:
    rows = [rng.choice(items, per_user, replace=False) for _ in range(batch)]
    return ElsaBatch(
        items=torch.from_numpy(np.concatenate(rows).astype(np.int64)),
        offsets=torch.arange(0, batch * per_user, per_user, dtype=torch.int64),
        counts=torch.full((batch,), float(per_user)),
        rows=batch,
    )


def dense_loss(weights: torch.Tensor, batch: ElsaBatch, items: int) -> torch.Tensor:
    """ELSA's own loss (recombee/ELSA): NMSE of the items-wide prediction, scaled to ``1 - cos``."""
    x = torch.zeros(batch.rows, items)
    users = torch.repeat_interleave(torch.arange(batch.rows), batch.counts.long())
    x[users, batch.items] = 1.0
    a = F.normalize(weights, dim=-1)
    prediction = (x @ a) @ a.T - x
    nmse = F.mse_loss(F.normalize(prediction, dim=-1), F.normalize(x, dim=-1))
    return nmse * items / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=12_101)
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--per-user", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = [random_batch(args.items, args.batch, args.per_user, rng) for _ in range(args.steps)]

    def gram(weights: torch.Tensor, batch: ElsaBatch) -> torch.Tensor:
        return elsa_loss(weights, batch)

    def dense(weights: torch.Tensor, batch: ElsaBatch) -> torch.Tensor:
        return dense_loss(weights, batch, args.items)

    forms: list[tuple[str, Callable[[torch.Tensor, ElsaBatch], torch.Tensor], int]] = [
        ("gram", gram, args.items * args.rank),
        ("dense", dense, max(args.batch, args.rank) * args.items),
    ]
    for name, loss_of, largest in forms:
        torch.manual_seed(0)
        weights = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(args.items, args.rank)))
        optimizer = torch.optim.Adam([weights], lr=5e-3)
        started = time.perf_counter()
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(weights, batch)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        seconds = (time.perf_counter() - started) / args.steps
        print(
            f"{name}: {seconds * 1000:.1f} ms/step, loss {loss.item():.4f}, largest tensor "
            f"{largest * 4 / 2**20:.1f} MiB (items {args.items}, rank {args.rank}, batch {args.batch})"
        )


if __name__ == "__main__":
    main()
