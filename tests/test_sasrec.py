"""The tied (SASRec) head: raw inner-product training, unit-augmented serving, the serving contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from realtime_contract import lists_moved_by_recent_items, unknown_user_lists

from serving.model.towers import FieldSpec, TowerSpec, TwoTowerModel, TwoTowerSpec
from training.config import ConfigError, load_config
from training.data.synth import SynthSummary
from training.fit.auto import SASREC, with_overrides


def _spec(**changes: object) -> TwoTowerSpec:
    spec = TwoTowerSpec(
        user=TowerSpec(30, (FieldSpec("gender", "categorical", 4),)),
        item=TowerSpec(40, (FieldSpec("category", "categorical", 5), FieldSpec("price", "numeric"))),
        embedding_dim=8,
        hidden_dims=(),
        output_dim=9,
        dropout=0.2,
        temperature=0.1,
        history_length=6,
        history_encoder="causal",
        user_id_embedding=False,
        head="tied",
        sequence_layers=2,
        embedding_dropout=0.2,
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def _inputs(rows: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    history = torch.randint(2, 40, (rows, 6), generator=generator)
    history[: rows // 2, :3] = 0  # left padding, as serving right-aligns histories
    users = {"id": torch.arange(rows) + 2, "gender": torch.randint(0, 4, (rows,)), "history": history}
    items = {
        "id": torch.arange(2, 40),
        "category": torch.randint(0, 5, (38,), generator=generator),
        "price": torch.rand(38, generator=generator),
    }
    return users, items


@pytest.mark.parametrize("attributes", [True, False])
def test_served_vectors_rank_as_the_trained_inner_product(attributes: bool) -> None:
    """Unit item vectors (what the index, diversity and explanations need) whose inner products
    with the served user vectors order every item as the raw scores the loss trained."""
    torch.manual_seed(0)
    model = TwoTowerModel(_spec(item_attributes=attributes)).eval()
    users, items = _inputs(8)
    with torch.no_grad():
        served = model.user_embedding(users) @ model.item_embedding(users | items).T
        raw = model.user_scoring(users) @ model.item_scoring(items).T
        unit = model.item_embedding(items).norm(dim=1)
        last = model.user_embedding_every_position(users)[:, -1]
    torch.testing.assert_close(unit, torch.ones_like(unit))
    assert torch.equal(served.argsort(dim=1, descending=True), raw.argsort(dim=1, descending=True))
    torch.testing.assert_close(last, model.user_embedding(users), atol=1e-5, rtol=1e-5)
    assert model.user_embedding(users).shape[1] == model.spec.output_dim == 9


def test_the_tied_head_reads_attributes_only_when_asked() -> None:
    torch.manual_seed(0)
    plain = TwoTowerModel(_spec(item_attributes=False)).eval()
    _, items = _inputs(2)
    changed = dict(items, category=(items["category"] + 1) % 5)
    with torch.no_grad():
        torch.testing.assert_close(plain.item_scoring(items), plain.item_scoring(changed))
    with_attributes = TwoTowerModel(_spec(item_attributes=True)).eval()
    with torch.no_grad():
        assert not torch.allclose(with_attributes.item_scoring(items), with_attributes.item_scoring(changed))


def test_tied_specs_round_trip_and_refuse_what_sasrec_does_not_have() -> None:
    spec = _spec()
    assert TwoTowerSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    legacy = spec.to_dict()
    for key in ("head", "sequence_layers", "embedding_dropout", "item_attributes"):
        del legacy[key]  # bundles written before the tied head: the MLP head, one block
    old = TwoTowerSpec.from_dict(legacy | {"output_dim": 8})
    assert (old.head, old.sequence_layers, old.embedding_dropout) == ("mlp", 1, 0.0)
    with pytest.raises(ValueError, match="user_id_embedding"):
        _spec(user_id_embedding=True)
    with pytest.raises(ValueError, match="output_dim"):
        _spec(output_dim=8)
    with pytest.raises(ValueError, match="causal"):
        _spec(history_encoder="mean")
    with pytest.raises(ConfigError, match=r"model\.head"):
        load_config(None, ["model.head=tied", "model.history_encoder=causal"])  # user-id table still on
    with pytest.raises(ConfigError, match=r"model\.head"):
        load_config(
            None,
            [
                "train.objective=linear",
                "model.head=tied",
                "model.history_encoder=causal",
                "model.user_id_embedding=false",
            ],
        )
    # Overrides are checked together, in any order.
    config = load_config(
        None, ["model.head=tied", "model.user_id_embedding=false", "model.history_encoder=causal"]
    )
    assert config.model.head == "tied"


def test_a_sasrec_bundle_keeps_the_real_time_contract(synth_data: SynthSummary, tmp_path: Path) -> None:
    """Trained with the auto candidate's recipe: served from the manifest alone, the request's recent
    items move a known user's list and give an unknown user a personalised list."""
    from serving.recommend.engine import TwoTowerEngine
    from training.pipeline import train

    config = with_overrides(
        tiny_config("eval.protocol=none", "tracking.enabled=false", "profiles.enabled=false"),
        SASREC,
    )
    config = with_overrides(config, {"train": {"patience": 0, "epochs": 3}})
    train(config, synth_data.interactions_path, synth_data.users_path, synth_data.items_path, tmp_path / "b")
    engine = TwoTowerEngine.load(tmp_path / "b")
    spec = engine.bundle.spec
    assert (spec.head, spec.output_dim, engine.bundle.index.d) == ("tied", 17, 17)
    np.testing.assert_allclose(np.linalg.norm(engine.item_vectors, axis=1), 1.0, atol=1e-4)
    users = engine.bundle.users.get_column("user_id").to_list()[:30]
    # The last items are what a sequence model reads first.
    assert lists_moved_by_recent_items(engine, users, 5) >= 0.8 * len(users)
    assert unknown_user_lists(engine, 3) >= 4
