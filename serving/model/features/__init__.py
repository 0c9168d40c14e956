"""Feature encoding shared by training and serving (one implementation, fitted once)."""

from serving.model.features.encoder import (
    ID_FEATURE,
    EncodedFeatures,
    EncoderOptions,
    EntityEncoder,
    FeatureKind,
    FeatureSpec,
)
from serving.model.features.vocabulary import FIRST_TOKEN_INDEX, OOV_INDEX, PAD_INDEX, Vocabulary

__all__ = [
    "FIRST_TOKEN_INDEX",
    "ID_FEATURE",
    "OOV_INDEX",
    "PAD_INDEX",
    "EncodedFeatures",
    "EncoderOptions",
    "EntityEncoder",
    "FeatureKind",
    "FeatureSpec",
    "Vocabulary",
]
