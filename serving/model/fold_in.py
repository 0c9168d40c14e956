"""Recent items folded into a stored user's pooled history, instead of a tower pass over the window.

A ``mean`` history encoder pools a right-aligned window as ``sum_a w(a) v_a / sum_a w(a)`` with
``w(a) = exp(-decay * a)`` for the item ``a`` places before the most recent (:func:`decayed_sums`).
Appending ``r`` items to a window of ``s`` stored items ages every stored item by ``r`` (its weight
times ``exp(-decay * r)``), adds the new items at ages ``r - 1 .. 0`` and, when ``s + r`` exceeds the
window length ``L``, drops the oldest ``s + r - L`` stored items. So with the stored window's two sums
kept per user, the request-time pool touches ``r`` new rows and at most ``r`` dropped ones, not ``L``
(a closed form's window is 1,000 items wide and its rows a thousand floats). The result is the tower's
own arithmetic on the appended window (:func:`~serving.model.history.append_recent`), up to float
rounding; windows of ``r >= L`` new items have nothing to keep and take the ordinary pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from serving.model.embedding import trim_padding
from serving.model.features import PAD_INDEX, EncodedFeatures
from serving.model.inputs import to_inputs
from serving.model.towers import TwoTowerModel, decayed_sums, pooled_from_sums

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def foldable(model: TwoTowerModel) -> bool:
    """Whether the user tower pools its history with a (decayed) mean, the only encoder whose pool
    is a sum that appended items update."""
    return model.spec.history_encoder == "mean"


_WINDOW_VALUES = 1 << 25
"""Most history-row values (windows x width x embedding dim) one pass holds: 128 MiB of float32."""


def window_sums(model: TwoTowerModel, windows: IntArray) -> FloatArray:
    """(B, D + 1): the weighted sum of each right-aligned window's history rows and, last, its total
    weight (:func:`~serving.model.towers.decayed_sums` on the user tower's history table)."""
    device = next(model.parameters()).device
    windows = trim_padding(windows)
    out = np.empty((len(windows), model.spec.embedding_dim + 1), dtype=np.float32)
    step = max(1, _WINDOW_VALUES // max(windows.shape[1] * model.spec.embedding_dim, 1))
    with torch.inference_mode():
        for start in range(0, len(windows), step):
            history = torch.from_numpy(np.ascontiguousarray(windows[start : start + step])).to(device)
            vectors = model.user_tower.item_ids(history)
            sums, weights = decayed_sums(vectors, history, model.spec.history_decay)
            out[start : start + len(history)] = torch.cat([sums, weights.unsqueeze(-1)], dim=1).float().cpu()
    return out


def folded_user_vectors(
    model: TwoTowerModel,
    features: EncodedFeatures,
    sums: FloatArray,
    stored: IntArray,
    appended: Sequence[IntArray],
) -> FloatArray:
    """(B, output_dim): the user tower's output for ``features`` (B rows) and each stored window with
    its items appended (:func:`fold_in`): the same as a tower pass over the appended windows."""
    device = next(model.parameters()).device
    pooled = fold_in(model, sums, stored, appended).to(device)
    with torch.inference_mode():
        out: FloatArray = (
            model.user_tower.from_pooled(to_inputs(features, device), pooled).float().cpu().numpy()
        )
    return out


def fold_in(
    model: TwoTowerModel, sums: FloatArray, stored: IntArray, appended: Sequence[IntArray]
) -> torch.Tensor:
    """(B, D): the pooled history of each stored window (``stored`` (B, L), right-aligned, with its
    :func:`window_sums` row in ``sums``) after the item indices ``appended[b]`` (oldest first, no
    padding, fewer than L) were appended, as the history encoder would pool the appended window."""
    decay = model.spec.history_decay
    length = stored.shape[1]
    used = (stored != PAD_INDEX).sum(axis=1)
    dropped = [
        stored[b, length - used[b] : length - used[b] + max(0, int(used[b]) + len(new) - length)]
        for b, new in enumerate(appended)
    ]
    # Every row the update reads, in one look-up of the history table (paged tables read by row).
    wanted = np.concatenate([*dropped, *appended]) if len(appended) else np.zeros(0, np.int64)
    with torch.inference_mode():
        device = next(model.parameters()).device
        looked_up = model.user_tower.item_ids(torch.from_numpy(wanted.astype(np.int64)).to(device))
        rows = looked_up.double().cpu().numpy()
    pooled_sums = sums[:, :-1].astype(np.float64)
    pooled_weights = sums[:, -1].astype(np.float64)
    start = 0
    for b, old in enumerate(dropped):  # the oldest stored items leave the window
        ages = used[b] - 1 - np.arange(len(old))
        weights = np.exp(-decay * ages) * (old != PAD_INDEX)
        pooled_sums[b] -= weights @ rows[start : start + len(old)]
        pooled_weights[b] -= weights.sum()
        start += len(old)
    for b, new in enumerate(appended):  # everything ages by len(new); the new items join at the end
        aged = np.exp(-decay * len(new))
        weights = np.exp(-decay * np.arange(len(new) - 1, -1, -1))
        pooled_sums[b] = aged * pooled_sums[b] + weights @ rows[start : start + len(new)]
        pooled_weights[b] = aged * pooled_weights[b] + weights.sum()
        start += len(new)
    return pooled_from_sums(
        torch.from_numpy(pooled_sums).float(), torch.from_numpy(pooled_weights).float(), decay
    )
