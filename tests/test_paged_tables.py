"""Big embedding tables read by row from the bundle's weights file (serving.bundle.paged_tables).

The threshold is lowered so that the shared tiny bundle's item-id table counts as big: the
same code path as a 10M-item table, on a real bundle, compared with the mapped table.
"""

from __future__ import annotations

import copy
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TrainedBundle
from torch import nn

from serving.bundle import paged_tables
from serving.bundle.paged_tables import FileRowsEmbedding, page_big_tables
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery


@pytest.fixture(scope="module")
def paged(trained: TrainedBundle) -> TwoTowerEngine:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paged_tables, "PAGED_TABLE_MIN_BYTES", 1024)
        return TwoTowerEngine.load(trained.bundle)


def test_big_tables_are_read_by_row_and_serve_the_same_answers(
    paged: TwoTowerEngine, engine: TwoTowerEngine
) -> None:
    model = paged.bundle.model
    assert isinstance(model.user_tower.item_ids, FileRowsEmbedding)
    assert model.user_tower.item_ids is model.item_tower.item_ids  # still one shared table
    assert isinstance(engine.bundle.model.user_tower.item_ids, nn.Embedding)  # 256 MiB default
    rows = np.arange(len(paged.bundle.users), dtype=np.int64)
    np.testing.assert_allclose(paged.embed_rows(rows), engine.embed_rows(rows), atol=1e-6, rtol=0)
    for user in paged.bundle.users.get_column("user_id").to_list()[:10]:
        recent = tuple(paged.bundle.item_ids.to_list()[:3])
        query = RecommendQuery(user, 8, recent_item_ids=recent)
        assert paged.recommend(query).items == engine.recommend(query).items
    # The weights are still the module's state: a bundle rewritten from it keeps them.
    state = model.state_dict()
    reference = engine.bundle.model.state_dict()
    assert set(state) == set(reference)
    assert all(torch.equal(state[name], reference[name]) for name in reference)


def test_rows_equal_the_table_for_any_shape_and_bad_indices_fail(tmp_path: Path) -> None:
    table = nn.Embedding(3000, 8)
    path = tmp_path / "w.pt"
    torch.save({"table.weight": table.weight.detach()}, path)
    holder = nn.Module()
    with torch.device("meta"):
        holder.table = nn.Embedding(3000, 8)
    holder.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True)
    assert page_big_tables(holder, path, min_bytes=1) == ["table"]
    paged_table = holder.table
    for ids in (
        torch.tensor([[5, 0, 2999], [5, 5, 1]]),
        torch.tensor([7]),
        torch.zeros((2, 0), dtype=torch.long),
    ):
        np.testing.assert_array_equal(paged_table(ids).numpy(), table(ids).detach().numpy())
    with pytest.raises(IndexError, match=r"3000\.\.3000 for 3000 rows"):
        paged_table(torch.tensor([3000]))
    with pytest.raises(ValueError, match="differs from the loaded table"):
        FileRowsEmbedding(table.weight.detach(), path, 0)  # the zip header is not the table


def test_a_replaced_bundle_directory_keeps_serving_the_loaded_weights(
    trained: TrainedBundle, engine: TwoTowerEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `recsys train --overwrite` swaps a new directory in under the serving one: the paged table
    # must keep reading the file it verified, not whatever now lies at its path and offset.
    bundle = Path(shutil.copytree(trained.bundle, tmp_path / "bundle"))
    monkeypatch.setattr(paged_tables, "PAGED_TABLE_MIN_BYTES", 1024)
    served = TwoTowerEngine.load(bundle)
    shutil.rmtree(bundle)
    bundle.mkdir()
    (bundle / "towers.pt").write_bytes(b"\xff" * (1 << 20))
    rows = np.arange(len(served.bundle.users), dtype=np.int64)  # none embedded before the swap
    np.testing.assert_allclose(served.embed_rows(rows), engine.embed_rows(rows), atol=1e-6, rtol=0)
    table = served.bundle.model.user_tower.item_ids
    twin = copy.deepcopy(table)  # its own descriptor, to the same (deleted) file
    ids = torch.tensor([[3, 1, 0]])
    assert torch.equal(twin(ids), table(ids))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(table)
