"""serving.model.towers (towers, spec), training.fit.losses and training.fit.trainer on tiny real data."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_config

from serving.model.towers import HISTORY, ID, FieldSpec, TowerSpec, TwoTowerModel, TwoTowerSpec, masked_mean
from training.data.synth import SynthSummary
from training.features import Prepared, prepare
from training.fit.losses import full_softmax_loss, in_batch_softmax_loss, sampled_softmax_loss
from training.fit.setup import resolve_device
from training.fit.trainer import measure_throughput, train_model

SPEC = TwoTowerSpec(
    user=TowerSpec(
        id_cardinality=7,
        fields=(
            FieldSpec("region", "categorical", 5),
            FieldSpec("age", "numeric"),
            FieldSpec("interests", "multi_categorical", 6),
        ),
    ),
    item=TowerSpec(
        id_cardinality=12,
        fields=(FieldSpec("brand", "categorical", 4), FieldSpec("price", "numeric")),
    ),
    embedding_dim=8,
    hidden_dims=(16, 12),
    output_dim=6,
    dropout=0.1,
    temperature=0.05,
    history_length=4,
)


def _user_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        ID: torch.randint(0, 7, (batch,), generator=generator),
        "region": torch.randint(0, 5, (batch,), generator=generator),
        "age": torch.randn(batch, generator=generator),
        "interests": torch.randint(0, 6, (batch, 3), generator=generator),
        HISTORY: torch.randint(0, 12, (batch, 4), generator=generator),
    }


def _item_inputs(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        ID: torch.randint(0, 12, (batch,), generator=generator),
        "brand": torch.randint(0, 4, (batch,), generator=generator),
        "price": torch.randn(batch, generator=generator),
    }


# ------------------------------------------------------------------ model


def test_tower_outputs_have_the_output_dim_and_unit_norm() -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(SPEC).eval()
    users = model.user_embedding(_user_inputs(5))
    items = model.item_embedding(_item_inputs(9))
    assert users.shape == (5, SPEC.output_dim)
    assert items.shape == (9, SPEC.output_dim)
    assert users.dtype == torch.float32
    torch.testing.assert_close(users.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(items.norm(dim=1), torch.ones(9))
    model.train()
    torch.testing.assert_close(model.user_embedding(_user_inputs(3)).norm(dim=1), torch.ones(3))


def test_item_id_table_is_shared_and_padding_rows_are_zero() -> None:
    model = TwoTowerModel(SPEC)
    assert model.user_tower.item_ids is model.item_tower.item_ids
    assert torch.count_nonzero(model.item_tower.item_ids.weight[0]) == 0
    assert torch.count_nonzero(model.user_tower.user_ids.weight[0]) == 0


def test_history_padding_does_not_change_the_user_embedding() -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(SPEC).eval()
    inputs = _user_inputs(1)
    with torch.no_grad():
        a = model.user_embedding(inputs | {HISTORY: torch.tensor([[0, 0, 0, 5]])})
        b = model.user_embedding(inputs | {HISTORY: torch.tensor([[5, 0, 0, 0]])})
        c = model.user_embedding(inputs | {HISTORY: torch.tensor([[0, 0, 5, 5]])})
        d = model.user_embedding(inputs | {HISTORY: torch.tensor([[0, 0, 3, 5]])})
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, d)


def test_spec_round_trip_through_json() -> None:
    data = json.loads(json.dumps(SPEC.to_dict()))
    restored = TwoTowerSpec.from_dict(data)
    assert restored == SPEC
    assert isinstance(restored.hidden_dims, tuple)
    assert isinstance(restored.user.fields, tuple)
    # The same spec rebuilds a model that accepts the same weights.
    TwoTowerModel(restored).load_state_dict(TwoTowerModel(SPEC).state_dict(), strict=True)


def test_masked_mean_ignores_padding() -> None:
    vectors = torch.tensor(
        [
            [[1.0, 2.0], [100.0, 100.0], [3.0, 4.0]],
            [[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]],
            [[5.0, 6.0], [1.0, 1.0], [1.0, 1.0]],
        ]
    )
    indices = torch.tensor([[4, 0, 2], [0, 0, 0], [1, 0, 0]])
    out = masked_mean(vectors, indices)
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0], [0.0, 0.0], [5.0, 6.0]]))


# ------------------------------------------------------------------ loss


def _ce(logits: list[list[float]]) -> float:
    """Mean cross-entropy with labels on the diagonal, by hand."""
    total = 0.0
    for i, row in enumerate(logits):
        total += -row[i] + math.log(sum(math.exp(x) for x in row))
    return total / len(logits)


USERS_2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
ITEMS_2 = torch.tensor([[0.6, 0.8], [1.0, 0.0]])


def test_loss_two_by_two_by_hand() -> None:
    loss = in_batch_softmax_loss(USERS_2, ITEMS_2, torch.tensor([2, 3]), temperature=0.5)
    # logits = users @ items.T / 0.5 = [[0.6, 1.0], [0.8, 0.0]] / 0.5
    expected = _ce([[1.2, 2.0], [1.6, 0.0]])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_loss_two_by_two_with_log_q_by_hand() -> None:
    log_q = torch.log(torch.tensor([0.75, 0.25]))
    loss = in_batch_softmax_loss(USERS_2, ITEMS_2, torch.tensor([2, 3]), temperature=0.5, log_q=log_q)
    # Column j is corrected by its item's log q (popular items are penalised as negatives).
    lq = [math.log(0.75), math.log(0.25)]
    expected = _ce([[1.2 - lq[0], 2.0 - lq[1]], [1.6 - lq[0], 0.0 - lq[1]]])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() != pytest.approx(_ce([[1.2, 2.0], [1.6, 0.0]]), rel=1e-3)


def test_duplicate_items_in_the_batch_are_not_negatives() -> None:
    e1, e2, e3 = torch.eye(3)
    items = torch.stack([e1, torch.nn.functional.normalize(e1 + e3, dim=0), e2])
    users = torch.stack([e1, e2, e3])
    moved = users.clone()
    moved[0] = e1 + 2 * e3  # changes only user 0's score against item row 1

    def loss(u: torch.Tensor, ids: list[int]) -> float:
        return in_batch_softmax_loss(u, items, torch.tensor(ids), temperature=0.1).item()

    # Rows 0 and 1 hold the same item: row 1 is not a negative for row 0 (and vice versa).
    assert loss(users, [5, 5, 9]) == pytest.approx(loss(moved, [5, 5, 9]), rel=1e-6)
    # Control: with distinct items the same change does move the loss.
    assert loss(users, [5, 6, 9]) != pytest.approx(loss(moved, [5, 6, 9]), rel=1e-3)
    # The positive itself is never masked: the loss equals the hand-computed value without the pair.
    logits = (users @ items.T / 0.1).tolist()
    row0 = [logits[0][0], logits[0][2]]
    row1 = [logits[1][1], logits[1][2]]
    row2 = logits[2]
    by_hand = (_ce([row0]) + _ce([row1]) + _ce([[row2[2], row2[0], row2[1]]])) / 3
    assert loss(users, [5, 5, 9]) == pytest.approx(by_hand, rel=1e-5)


def test_masked_loss_has_finite_gradients() -> None:
    users = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    items = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    loss = in_batch_softmax_loss(users, items, torch.tensor([2, 2, 2, 3]), 0.05, torch.full((4,), -1.0))
    loss.backward()  # type: ignore[no-untyped-call]
    assert torch.isfinite(loss)
    assert users.grad is not None
    assert items.grad is not None
    assert torch.isfinite(users.grad).all()
    assert torch.isfinite(items.grad).all()


# ------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def prepared(synth_data: SynthSummary) -> Prepared:
    return prepare(
        pl.read_parquet(synth_data.interactions_path),
        pl.read_parquet(synth_data.users_path),
        pl.read_parquet(synth_data.items_path),
        tiny_config().data,
    )


def test_training_reduces_the_loss_and_is_deterministic(prepared: Prepared) -> None:
    config = tiny_config("train.epochs=4")
    first = train_model(prepared, config)
    second = train_model(prepared, config)
    assert len(first.epoch_losses) == 4
    assert all(math.isfinite(x) for x in first.epoch_losses)
    assert first.epoch_losses[-1] < first.epoch_losses[0]
    assert first.epoch_losses == second.epoch_losses  # bit-identical on CPU for one seed
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert first.examples == int(prepared.sequences.indptr[-1])
    assert first.samples_per_second > 0
    assert not first.model.training  # returned in eval mode
    other_seed = train_model(prepared, tiny_config("train.epochs=4", "train.seed=7"))
    assert other_seed.epoch_losses != first.epoch_losses


def test_on_epoch_callback_and_tower_shapes(prepared: Prepared) -> None:
    seen: list[tuple[int, float]] = []
    result = train_model(prepared, tiny_config("train.epochs=2"), lambda e, loss: seen.append((e, loss)))
    assert seen == list(enumerate(result.epoch_losses))
    spec = result.model.spec
    assert spec.user.id_cardinality == prepared.n_users + 2
    assert spec.item.id_cardinality == prepared.n_items + 2
    assert spec.output_dim == 16
    assert spec.hidden_dims == (32,)
    user_fields = {f.name for f in spec.user.fields}
    assert not {"name", "email", "phone"} & user_fields
    assert {f.name for f in spec.item.fields} >= {"category", "brand", "price", "tags"}


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_untrained_scores_are_cosines() -> None:
    model = TwoTowerModel(SPEC).eval()
    with torch.no_grad():
        scores = model.user_embedding(_user_inputs(4)) @ model.item_embedding(_item_inputs(6)).T
    assert np.all(np.abs(scores.numpy()) <= 1.0 + 1e-5)


# ------------------------------------------------------- attention history


ATTENTION = dataclasses.replace(SPEC, history_encoder="attention")


def test_attention_history_handles_empty_histories_and_is_order_aware() -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(ATTENTION).eval()
    inputs = _user_inputs(1)
    with torch.no_grad():
        empty = model.user_embedding(inputs | {HISTORY: torch.tensor([[0, 0, 0, 0]])})
        forward = model.user_embedding(inputs | {HISTORY: torch.tensor([[0, 3, 5, 7]])})
        backward = model.user_embedding(inputs | {HISTORY: torch.tensor([[0, 7, 5, 3]])})
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(empty.norm(dim=1), torch.ones(1))
    # Positions are learned: the same items in another order give another embedding.
    assert not torch.allclose(forward, backward)


def test_attention_spec_round_trips_and_old_manifests_default_to_mean() -> None:
    data = json.loads(json.dumps(ATTENTION.to_dict()))
    assert TwoTowerSpec.from_dict(data) == ATTENTION
    del data["history_encoder"]
    assert TwoTowerSpec.from_dict(data).history_encoder == "mean"


def test_unknown_history_encoder_is_refused() -> None:
    with pytest.raises(ValueError, match="history_encoder"):
        TwoTowerModel(dataclasses.replace(SPEC, history_encoder="lstm"))


# ------------------------------------------------------------ negatives


def test_full_softmax_is_cross_entropy_over_every_item() -> None:
    users = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    targets = torch.tensor([0, 4, 2])
    expected = torch.nn.functional.cross_entropy(users @ items.T / 0.1, targets)
    torch.testing.assert_close(full_softmax_loss(users, items, targets, 0.1), expected)


def test_uniform_negatives_equal_to_a_positive_are_masked() -> None:
    users = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    ids = torch.tensor([5, 6])
    extra = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    extra_ids = torch.tensor([5, 7, 8])  # item 5 is row 0's positive: not a negative for row 0
    base = sampled_softmax_loss(users, items, ids, 0.1, extra_items=extra, extra_ids=extra_ids)
    moved = extra.clone()
    moved[0] = users[0]  # make the duplicate score as high as possible for row 0
    changed = sampled_softmax_loss(users, items, ids, 0.1, extra_items=moved, extra_ids=extra_ids)
    # Row 0 ignores the duplicate; row 1 sees it as a negative, so only row 1's term moves.
    row0 = sampled_softmax_loss(users[:1], items[:1], ids[:1], 0.1, extra_items=extra, extra_ids=extra_ids)
    row0_moved = sampled_softmax_loss(
        users[:1], items[:1], ids[:1], 0.1, extra_items=moved, extra_ids=extra_ids
    )
    torch.testing.assert_close(row0, row0_moved)
    assert not torch.allclose(base, changed)


def test_mixed_negatives_training_runs_and_learns(prepared: Prepared) -> None:
    config = tiny_config("train.uniform_negatives=16", "train.epochs=3")
    result = train_model(prepared, config)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert all(math.isfinite(x) for x in result.epoch_losses)


def test_throughput_measures_both_loops_on_the_same_batches(prepared: Prepared) -> None:
    result = measure_throughput(prepared, tiny_config(), steps=4, warmup=1, rounds=2)
    assert result.steps == 8
    assert result.pipeline_samples_per_second > 0
    assert result.model_only_samples_per_second > 0
    assert result.ratio == pytest.approx(
        result.pipeline_samples_per_second / result.model_only_samples_per_second
    )


def test_bf16_precision_trains_with_fp32_weights(prepared: Prepared) -> None:
    # bf16 autocast changes the arithmetic of forward passes only: the loss still falls and
    # the weights (and so the bundle) stay fp32.
    result = train_model(prepared, tiny_config("train.epochs=3", "train.precision=bf16"))
    assert all(math.isfinite(x) for x in result.epoch_losses)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
