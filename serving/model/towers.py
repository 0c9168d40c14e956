"""The two-tower model. Imports only torch (and the standard library).

The user tower encodes user id + user attributes + the pooled recent item history; the
item tower encodes item id + item attributes. The item-id embedding table is shared by the
item tower and the history encoder, so history items and candidate items live in one space.
Two heads (``TwoTowerSpec.head``):

* ``mlp``: both towers end in an MLP whose output is L2-normalised; the model scores by cosine
  over a temperature.
* ``tied`` (SASRec): the user is the sequence encoder's last state, the item its row of the shared
  id table (plus its attribute embeddings, optionally), scored by their raw inner product. What the
  towers *serve* is the same ranking in unit item vectors: the item vector ``v`` becomes
  ``[v / M, sqrt(1 - |v|^2 / M^2)]`` with ``M`` a bound on every item's norm, the user ``[u, 0]``
  (the inner-product-to-cosine reduction the closed forms use), so indexes, diversity and
  explanations keep their unit item vectors while ``user . item = u . v / M`` ranks as ``u . v``.

The architecture is fully described by :class:`TwoTowerSpec`, which the bundle stores;
serving rebuilds the model from it and never re-declares shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

Inputs = dict[str, Tensor]
"""Tower inputs: ``"id"`` (B,) int64, each field by name ((B,) int64 categorical,
(B, L) int64 multi-valued with 0 padding, (B,) float32 numeric) and, for users,
``"history"`` (B, history_length) int64 item indices with 0 padding."""

HISTORY = "history"
ID = "id"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str
    """``categorical``, ``multi_categorical`` or ``numeric``."""
    cardinality: int = 0


@dataclass(frozen=True)
class TowerSpec:
    id_cardinality: int
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True)
class TwoTowerSpec:
    user: TowerSpec
    item: TowerSpec
    embedding_dim: int
    hidden_dims: tuple[int, ...]
    output_dim: int
    dropout: float
    temperature: float
    history_length: int
    history_encoder: str = "mean"
    """``mean``: masked mean of the history's item embeddings; ``attention``: one
    pre-norm transformer layer with learned positions, then a masked mean; ``causal``:
    one pre-norm transformer layer with learned positions and causal attention (SASRec),
    read at the most recent position."""
    user_id_embedding: bool = True
    """The user tower embeds the user id (a free vector per known user). Without it the user is
    their history and attributes only: nothing to memorise per user, nothing missing for a new one."""
    shared_history_embedding: bool = True
    """History items are embedded with the item tower's id table (one space for both sides), or,
    when False, with a table of their own (an item "as context" differs from an item "as answer",
    as in the encoder and decoder of Mult-DAE)."""
    history_decay: float = 0.0
    """``mean`` encoder only: the item ``a`` places before the most recent one weighs ``exp(-decay * a)``
    in the mean (0: a plain mean). Recency matters for "what next" data, not for whole-taste data."""
    head: str = "mlp"
    """``mlp`` (an MLP per tower, unit outputs, cosine / temperature) or ``tied`` (SASRec: the
    encoder's state against the shared id table by inner product; needs the ``causal`` encoder, no
    user-id table and ``output_dim = embedding_dim + 1``, the served unit-augmented width)."""
    sequence_layers: int = 1
    """Transformer blocks of the ``attention`` and ``causal`` encoders (SASRec uses 2)."""
    embedding_dropout: float = 0.0
    """Dropout on the history's item + position embeddings before the transformer blocks (SASRec)."""
    item_attributes: bool = True
    """``tied`` head: the item vector adds the mean of its attribute embeddings to its id row
    (False: the id row alone, as in SASRec). The ``mlp`` head always reads the attributes."""
    parts: tuple[TwoTowerSpec, ...] = ()
    """``blend`` head: the models whose scores it adds (see :func:`blend_spec`)."""
    part_weights: tuple[float, ...] = ()
    """``blend`` head: each part's user vector is multiplied by its weight."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwoTowerSpec:
        def tower(d: dict[str, Any]) -> TowerSpec:
            return TowerSpec(int(d["id_cardinality"]), tuple(FieldSpec(**f) for f in d["fields"]))

        return cls(
            user=tower(data["user"]),
            item=tower(data["item"]),
            embedding_dim=int(data["embedding_dim"]),
            hidden_dims=tuple(int(h) for h in data["hidden_dims"]),
            output_dim=int(data["output_dim"]),
            dropout=float(data["dropout"]),
            temperature=float(data["temperature"]),
            history_length=int(data["history_length"]),
            history_encoder=str(data.get("history_encoder", "mean")),
            user_id_embedding=bool(data.get("user_id_embedding", True)),
            shared_history_embedding=bool(data.get("shared_history_embedding", True)),
            history_decay=float(data.get("history_decay", 0.0)),
            head=str(data.get("head", "mlp")),
            sequence_layers=int(data.get("sequence_layers", 1)),
            embedding_dropout=float(data.get("embedding_dropout", 0.0)),
            item_attributes=bool(data.get("item_attributes", True)),
            parts=tuple(cls.from_dict(part) for part in data.get("parts", ())),
            part_weights=tuple(float(w) for w in data.get("part_weights", ())),
        )

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head: unknown kind {self.head!r} ({', '.join(HEADS)})")
        if (self.head == "blend") != bool(self.parts) or len(self.parts) != len(self.part_weights):
            raise ValueError("head 'blend': needs parts and one weight per part (and only a blend has parts)")
        if self.parts and self.output_dim != sum(p.output_dim for p in self.parts):
            raise ValueError(f"head 'blend': output_dim {self.output_dim} is not the sum of its parts'")
        if self.head == "tied":
            problems = [
                (
                    self.history_encoder != "causal",
                    f"needs history_encoder 'causal', not {self.history_encoder!r}",
                ),
                (self.user_id_embedding, "needs user_id_embedding False (SASRec has no user-id table)"),
                (not self.shared_history_embedding, "needs shared_history_embedding (the table is tied)"),
                (
                    self.output_dim != self.embedding_dim + 1,
                    f"needs output_dim = embedding_dim + 1 = {self.embedding_dim + 1}, not {self.output_dim}",
                ),
            ]
            for failed, message in problems:
                if failed:
                    raise ValueError(f"head 'tied': {message}")
        if self.sequence_layers < 1:
            raise ValueError(f"sequence_layers {self.sequence_layers}: must be >= 1")
        if not 0 <= self.embedding_dropout < 1:
            raise ValueError(f"embedding_dropout {self.embedding_dropout}: must be in [0, 1)")


def _embedding(rows: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(rows, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=0.05)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


def masked_mean(vectors: Tensor, indices: Tensor) -> Tensor:
    """Mean of ``vectors`` (B, L, D) over positions where ``indices`` (B, L) != 0."""
    mask = (indices != 0).unsqueeze(-1).to(vectors.dtype)
    return (vectors * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class FieldEncoder(nn.Module):
    """Embeds a tower's attribute fields and concatenates them."""

    def __init__(self, fields: tuple[FieldSpec, ...], dim: int) -> None:
        super().__init__()
        self.fields = fields
        # Module keys are positional: column names may contain characters ModuleDict rejects.
        self.tables = nn.ModuleDict(
            {f"f{i}": _embedding(f.cardinality, dim) for i, f in enumerate(fields) if f.kind != "numeric"}
        )
        self.numeric = [f.name for f in fields if f.kind == "numeric"]
        self.output_dim = dim * len(self.tables) + len(self.numeric)

    def forward(self, inputs: Inputs) -> list[Tensor]:
        parts: list[Tensor] = []
        for i, field in enumerate(self.fields):
            if field.kind == "numeric":
                continue
            vectors = self.tables[f"f{i}"](inputs[field.name])
            parts.append(masked_mean(vectors, inputs[field.name]) if vectors.dim() == 3 else vectors)
        if self.numeric:
            parts.append(torch.stack([inputs[name].float() for name in self.numeric], dim=1))
        return parts


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


HEADS = ("mlp", "tied", "blend")


class ItemTower(nn.Module):
    def __init__(self, spec: TwoTowerSpec, item_ids: nn.Embedding) -> None:
        super().__init__()
        self.tied = spec.head == "tied"
        self.item_ids = item_ids
        self.fields = FieldEncoder(spec.item.fields, spec.embedding_dim)
        if self.tied:
            # Numeric attributes have no embedding row to add to the id's: the tied head reads the
            # categorical ones only.
            self.fields.numeric = []
            self.use_fields = spec.item_attributes and len(self.fields.tables) > 0
        else:
            self.mlp = _mlp(
                spec.embedding_dim + self.fields.output_dim, spec.hidden_dims, spec.output_dim, spec.dropout
            )

    def scoring(self, inputs: Inputs) -> Tensor:
        """The vectors the training loss compares with the user's: (B, D). ``mlp``: the served unit
        vectors; ``tied``: the raw item vectors (id row, plus the mean of the attribute rows)."""
        if not self.tied:
            return self.forward(inputs)
        vector: Tensor = self.item_ids(inputs[ID])
        if self.use_fields:
            vector = vector + torch.stack(self.fields(inputs), dim=0).mean(dim=0)
        return vector

    def norm_bound(self) -> Tensor:
        """``tied``: an upper bound on every item's :meth:`scoring` norm, from the weights alone (the
        largest id row plus the mean over fields of each field's largest row, by the triangle
        inequality), so every batch of items is scaled alike and the augmented coordinate is real."""
        bound: Tensor = self.item_ids.weight.norm(dim=1).max()
        if self.use_fields:
            tables: list[nn.Embedding] = list(self.fields.tables.values())  # type: ignore[arg-type]
            rows = [table.weight.norm(dim=1).max() for table in tables]
            bound = bound + torch.stack(rows).sum() / len(rows)
        return bound.clamp(min=1e-12)

    def forward(self, inputs: Inputs) -> Tensor:
        if self.tied:
            return augment_items(self.scoring(inputs), self.norm_bound())
        parts = [self.item_ids(inputs[ID]), *self.fields(inputs)]
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


def augment_items(vectors: Tensor, bound: Tensor) -> Tensor:
    """(B, D + 1) unit rows ``[v / bound, sqrt(1 - |v / bound|^2)]`` (``bound`` >= every norm)."""
    scaled = vectors / bound
    rest = (1.0 - scaled.pow(2).sum(dim=-1, keepdim=True)).clamp(min=0.0).sqrt()
    return torch.cat([scaled, rest], dim=-1)


def augment_users(vectors: Tensor) -> Tensor:
    """(..., D + 1): ``vectors`` with a 0 coordinate, so that their inner products with
    :func:`augment_items` rows rank as with the raw item vectors."""
    return torch.cat([vectors, vectors.new_zeros(*vectors.shape[:-1], 1)], dim=-1)


HISTORY_ENCODERS = ("mean", "attention", "causal")
SEQUENCE_ENCODERS = ("mean", "causal")
"""Encoders whose state at every position depends only on the items up to it, so one pass
over a sequence yields the user vector after each of its prefixes (every-position training)."""


def decayed_mean(vectors: Tensor, indices: Tensor, decay: float) -> Tensor:
    """Mean of ``vectors`` (B, L, D) over positions where ``indices`` (B, L) != 0, the last position
    weighing 1 and each one before it ``exp(-decay)`` times the next (histories are right-aligned,
    most recent last). ``decay = 0`` is :func:`masked_mean`."""
    if decay == 0:
        return masked_mean(vectors, indices)
    return pooled_from_sums(*decayed_sums(vectors, indices, decay), decay)


def decayed_sums(vectors: Tensor, indices: Tensor, decay: float) -> tuple[Tensor, Tensor]:
    """(weighted sum (B, D), total weight (B,)) whose quotient is :func:`decayed_mean`: the item ``a``
    places before the most recent weighs ``exp(-decay * a)``, padding 0. Sums can be updated in place
    of a whole pass when items are appended (every weight times ``exp(-decay * appended)``)."""
    length = indices.shape[1]
    age = torch.arange(length - 1, -1, -1, device=vectors.device, dtype=vectors.dtype)
    weights = torch.exp(-decay * age).unsqueeze(0) * (indices != 0).to(vectors.dtype)
    return (vectors * weights.unsqueeze(-1)).sum(dim=1), weights.sum(dim=1)


def pooled_from_sums(sums: Tensor, weights: Tensor, decay: float) -> Tensor:
    """:func:`decayed_mean` from :func:`decayed_sums`' parts, with the same guard for an empty history
    as :func:`masked_mean` (decay 0) and :func:`decayed_mean`."""
    return sums / weights.unsqueeze(-1).clamp(min=1.0 if decay == 0 else 1e-12)


def prefix_mean(vectors: Tensor, indices: Tensor) -> Tensor:
    """(B, L, D): at position t, the mean of ``vectors`` over positions <= t where ``indices`` != 0.

    At the last position this is :func:`masked_mean` of the whole row.
    """
    mask = (indices != 0).unsqueeze(-1).to(vectors.dtype)
    return (vectors * mask).cumsum(dim=1) / mask.cumsum(dim=1).clamp(min=1.0)


class HistoryEncoder(nn.Module):
    """Pools the embeddings of a right-aligned, 0-padded item history into one vector."""

    def __init__(self, spec: TwoTowerSpec) -> None:
        super().__init__()
        self.kind = spec.history_encoder
        if self.kind not in HISTORY_ENCODERS:
            raise ValueError(f"history_encoder: unknown kind {self.kind!r} ({', '.join(HISTORY_ENCODERS)})")
        if spec.history_decay < 0 or (spec.history_decay > 0 and self.kind != "mean"):
            raise ValueError(
                f"history_decay {spec.history_decay}: must be >= 0, and 0 unless history_encoder is mean"
            )
        self.decay = spec.history_decay
        dim = spec.embedding_dim
        if self.kind in ("attention", "causal"):
            self.positions = nn.Embedding(spec.history_length, dim)
            nn.init.normal_(self.positions.weight, std=0.02)
            layer = nn.TransformerEncoderLayer(
                dim,
                nhead=(2 if dim % 2 == 0 else 1) if self.kind == "attention" else 1,
                dim_feedforward=2 * dim if self.kind == "attention" else dim,
                dropout=spec.dropout,
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(
                layer, num_layers=spec.sequence_layers, enable_nested_tensor=False
            )
            self.embedding_dropout = nn.Dropout(spec.embedding_dropout)
            if self.kind == "causal":
                self.final_norm = nn.LayerNorm(dim)

    def forward(self, vectors: Tensor, history: Tensor) -> Tensor:
        if self.kind == "mean":
            return decayed_mean(vectors, history, self.decay)
        if self.kind == "causal":
            return self._last_position(vectors, history)
        padding = history == 0
        # A row with no history at all would mask every key (NaN attention): leave the
        # last slot visible; it is still excluded from the pooled mean below.
        padding[:, -1] &= ~padding.all(dim=1)
        x = self.embedding_dropout(vectors + self.positions.weight[-history.shape[1] :].unsqueeze(0))
        return masked_mean(self.encoder(x, src_key_padding_mask=padding), history)

    def _last_position(self, vectors: Tensor, history: Tensor) -> Tensor:
        """``every_position(...)[:, -1]`` with one query instead of L in the last block: the
        layer's own modules, attention from the most recent slot to every state of the row (and
        itself). Earlier blocks need every position (the last one attends to their states)."""
        length = history.shape[1]
        x = self.embedding_dropout(vectors + self.positions.weight[-length:].unsqueeze(0))
        layers = self.encoder.layers
        mask = self._causal_mask(history)
        for block in layers[:-1]:
            x = block(x, src_mask=mask)
        layer = layers[-1]
        normed = layer.norm1(x)
        hidden = normed[:, -1:]
        blocked = history == 0
        blocked[:, -1] = False
        attended, _ = layer.self_attn(hidden, normed, normed, key_padding_mask=blocked, need_weights=False)
        out = x[:, -1:] + layer.dropout1(attended)
        out = out + layer.dropout2(
            layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(out)))))
        )
        result: Tensor = self.final_norm(out[:, 0])
        return result

    def every_position(self, vectors: Tensor, history: Tensor) -> Tensor:
        """(B, L, D): the pooled state after each position, from the items up to it only.

        Its last position equals :meth:`forward` for ``mean`` and ``causal`` (what serving computes
        from the same right-aligned history); ``attention`` looks both ways and has no such form.
        """
        if self.kind == "mean" and self.decay == 0:
            return prefix_mean(vectors, history)
        if self.kind != "causal":
            raise ValueError(
                f"history_encoder {self.kind!r} (history_decay {self.decay}) has no every-position "
                f"form ({SEQUENCE_ENCODERS}, without decay)"
            )
        length = history.shape[1]
        x = self.embedding_dropout(vectors + self.positions.weight[-length:].unsqueeze(0))
        out: Tensor = self.final_norm(self.encoder(x, mask=self._causal_mask(history)))
        return out

    @staticmethod
    def _causal_mask(history: Tensor) -> Tensor:
        """(B, L, L) keys a query may not see: later positions and padding, but always itself, so
        that no row is fully masked (padded queries attend to their own slot; they are never read)."""
        length = history.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=history.device).triu(1)
        blocked = future.unsqueeze(0) | (history == 0).unsqueeze(1)
        blocked &= ~torch.eye(length, dtype=torch.bool, device=history.device).unsqueeze(0)
        return blocked


class UserTower(nn.Module):
    def __init__(self, spec: TwoTowerSpec, item_ids: nn.Embedding) -> None:
        super().__init__()
        self.user_ids = (
            _embedding(spec.user.id_cardinality, spec.embedding_dim) if spec.user_id_embedding else None
        )
        self.item_ids = (
            item_ids
            if spec.shared_history_embedding
            else _embedding(spec.item.id_cardinality, spec.embedding_dim)
        )
        self.history = HistoryEncoder(spec)
        self.tied = spec.head == "tied"
        # The tied head's user is the sequence alone (SASRec): no attribute tables to carry.
        self.fields = FieldEncoder(() if self.tied else spec.user.fields, spec.embedding_dim)
        if not self.tied:
            in_dim = (2 if self.user_ids is not None else 1) * spec.embedding_dim + self.fields.output_dim
            self.mlp = _mlp(in_dim, spec.hidden_dims, spec.output_dim, spec.dropout)

    def forward(self, inputs: Inputs) -> Tensor:
        history = inputs[HISTORY]
        return self.from_pooled(inputs, self.history(self.item_ids(history), history))

    def scoring(self, inputs: Inputs) -> Tensor:
        """(B, D): what the training loss compares with :meth:`ItemTower.scoring`. ``mlp``:
        :meth:`forward`; ``tied``: the encoder's raw state."""
        if not self.tied:
            return self.forward(inputs)
        history = inputs[HISTORY]
        state: Tensor = self.history(self.item_ids(history), history)
        return state

    def from_pooled(self, inputs: Inputs, pooled: Tensor) -> Tensor:
        """The tower's output for an already pooled history (B, embedding_dim): what :meth:`forward`
        computes after the history encoder (``inputs`` without ``history`` will do)."""
        if self.tied:
            return augment_users(pooled)
        user = [self.user_ids(inputs[ID])] if self.user_ids is not None else []
        parts = [*user, pooled, *self.fields(inputs)]
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)

    def every_position(self, inputs: Inputs) -> Tensor:
        """(B, L, output_dim): the user vector after each prefix of the history, in one pass.

        Position ``t`` is what :meth:`forward` returns for the history cut after ``t`` (exactly, for
        the ``mean`` encoder; for ``causal`` up to the learned positions, as in SASRec). The last
        position is :meth:`forward` of the whole history.
        """
        scoring = self.scoring_every_position(inputs)
        return augment_users(scoring) if self.tied else scoring

    def scoring_every_position(self, inputs: Inputs) -> Tensor:
        """(B, L, D): what the training loss compares with :meth:`ItemTower.scoring` after each
        prefix. ``mlp``: :meth:`every_position`; ``tied``: the encoder's raw states."""
        history = inputs[HISTORY]
        pooled = self.history.every_position(self.item_ids(history), history)
        if self.tied:
            return pooled
        length = history.shape[1]
        user = (
            [self.user_ids(inputs[ID]).unsqueeze(1).expand(-1, length, -1)]
            if self.user_ids is not None
            else []
        )
        fields = [f.unsqueeze(1).expand(-1, length, -1) for f in self.fields(inputs)]
        return F.normalize(self.mlp(torch.cat([*user, pooled, *fields], dim=-1)), dim=-1)


def blend_spec(parts: tuple[TwoTowerSpec, ...], weights: tuple[float, ...]) -> TwoTowerSpec:
    """A model scoring ``sum_i weights[i] * (user_i . item_i) / sqrt(len(parts))``: its user vector is
    the weighted concatenation of the parts' user vectors, its item vector the concatenation of their
    unit item vectors over ``sqrt(len(parts))`` (unit again). It reads the longest of the parts'
    histories; each part reads its own most recent ``history_length`` items of it. Parts share the
    features (user and item tower specs) and are trained apart; the blend only serves."""
    first = parts[0]
    if any((p.user, p.item) != (first.user, first.item) for p in parts):
        raise ValueError("blend: parts must be trained on the same features")
    return TwoTowerSpec(
        user=first.user,
        item=first.item,
        embedding_dim=max(p.embedding_dim for p in parts),
        hidden_dims=(),
        output_dim=sum(p.output_dim for p in parts),
        dropout=0.0,
        temperature=1.0,
        history_length=max(p.history_length for p in parts),
        history_encoder="blend",
        user_id_embedding=False,
        head="blend",
        parts=parts,
        part_weights=weights,
    )


class TwoTowerModel(nn.Module):
    """User and item towers over a shared item-id embedding table (or, for a ``blend`` spec, the
    parts' models side by side)."""

    def __init__(self, spec: TwoTowerSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.head == "blend":
            self.parts = nn.ModuleList(TwoTowerModel(part) for part in spec.parts)
            return
        self.parts = nn.ModuleList()
        item_ids = _embedding(spec.item.id_cardinality, spec.embedding_dim)
        self.user_tower = UserTower(spec, item_ids)
        self.item_tower = ItemTower(spec, item_ids)

    def _part_models(self) -> list[TwoTowerModel]:
        """A blend's part models, typed (a ModuleList yields plain modules)."""
        return [part for part in self.parts if isinstance(part, TwoTowerModel)]

    def _part_inputs(self, inputs: Inputs, part: TwoTowerSpec) -> Inputs:
        """A part's view of the blend's user inputs: its own most recent ``history_length`` items."""
        if HISTORY not in inputs:
            return inputs
        return {**inputs, HISTORY: inputs[HISTORY][:, -part.history_length :]}

    @property
    def logit_temperature(self) -> float:
        """What training divides :meth:`item_scoring` inner products by: the spec's temperature for
        cosines (``mlp``), 1 for the tied head's raw inner products."""
        return 1.0 if self.spec.head == "tied" else self.spec.temperature

    def user_embedding(self, inputs: Inputs) -> Tensor:
        """(B, output_dim): the served user vector (unit for ``mlp``; ``[state, 0]`` for ``tied``)."""
        if self.spec.head == "blend":
            return torch.cat(
                [
                    weight * model.user_embedding(self._part_inputs(inputs, part))
                    for model, part, weight in zip(
                        self._part_models(), self.spec.parts, self.spec.part_weights, strict=True
                    )
                ],
                dim=-1,
            )
        out: Tensor = self.user_tower(inputs)
        return out

    def item_embedding(self, inputs: Inputs) -> Tensor:
        """(B, output_dim), unit L2 norm: the served item vector."""
        if self.spec.head == "blend":
            parts = [model.item_embedding(inputs) for model in self._part_models()]
            blended: Tensor = torch.cat(parts, dim=-1) / len(parts) ** 0.5
            return blended
        out: Tensor = self.item_tower(inputs)
        return out

    def user_embedding_every_position(self, inputs: Inputs) -> Tensor:
        """(B, L, output_dim): the served user vector after each prefix of ``inputs["history"]``."""
        out: Tensor = self.user_tower.every_position(inputs)
        return out

    def item_scoring(self, inputs: Inputs) -> Tensor:
        """(B, D): the item vectors the training loss uses (see :attr:`logit_temperature`)."""
        out: Tensor = self.item_tower.scoring(inputs)
        return out

    def user_scoring(self, inputs: Inputs) -> Tensor:
        """(B, D): the user vectors the training loss uses."""
        out: Tensor = self.user_tower.scoring(inputs)
        return out

    def user_scoring_every_position(self, inputs: Inputs) -> Tensor:
        """(B, L, D): the user vectors the training loss uses after each prefix."""
        out: Tensor = self.user_tower.scoring_every_position(inputs)
        return out
