"""Serving side of the recommendation service.

Everything that both training and serving need (feature encoding, the model's towers,
the bundle format, the FAISS index) lives here, so that ``serving`` never imports
``training`` and the serving image carries no training-only dependencies.
"""
