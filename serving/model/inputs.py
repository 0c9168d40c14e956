"""Glue between encoded features (NumPy) and tower inputs (torch).

Training, evaluation, batch jobs and the online engine all build tower inputs through
these functions, so every path feeds the towers identically.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from serving.model.features import ID_FEATURE, EncodedFeatures, EntityEncoder
from serving.model.towers import HISTORY, FieldSpec, Inputs, TowerSpec


def tower_spec(encoder: EntityEncoder) -> TowerSpec:
    """The model's view of an entity encoder: id cardinality and field specs."""
    return TowerSpec(
        id_cardinality=encoder.ids.cardinality,
        fields=tuple(FieldSpec(s.name, s.kind, s.cardinality) for s in encoder.specs),
    )


def gather(features: EncodedFeatures, rows: npt.NDArray[np.int64]) -> EncodedFeatures:
    """Rows of every feature array (rows are table rows: index - FIRST_TOKEN_INDEX)."""
    return {name: values[rows] for name, values in features.items()}


def to_inputs(
    features: EncodedFeatures,
    device: torch.device | str = "cpu",
    history: npt.NDArray[np.int64] | None = None,
) -> Inputs:
    """Tensors for a tower; ``history`` (B, L) is added for the user tower."""
    inputs: dict[str, torch.Tensor] = {}
    for name, values in features.items():
        inputs[name] = torch.from_numpy(np.ascontiguousarray(values)).to(device, non_blocking=True)
    if history is not None:
        inputs[HISTORY] = torch.from_numpy(np.ascontiguousarray(history)).to(device, non_blocking=True)
    return inputs


def replace_ids(features: EncodedFeatures, ids: npt.NDArray[Any]) -> EncodedFeatures:
    out = dict(features)
    out[ID_FEATURE] = ids
    return out
