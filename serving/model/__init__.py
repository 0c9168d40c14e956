"""The contract training and serving share: towers, feature encoders, histories, tower inputs.

Training builds its examples and serving builds its queries through exactly these modules, so the
two cannot drift: :mod:`~serving.model.towers` (the two-tower model, imports only torch),
:mod:`~serving.model.features` (fitted encoders, stored as data in the bundle),
:mod:`~serving.model.history` (per-user sequences and history windows),
:mod:`~serving.model.inputs` (encoded features -> tower inputs) and
:mod:`~serving.model.embedding` (batched tower passes).

Imports nothing else of the project.
"""

__all__ = ["embedding", "features", "history", "inputs", "towers"]
