"""Loaders of published SAE file formats; each module registers one format when imported."""
