"""Modelport: a self-hosted model-as-a-service platform."""

__version__ = "0.1.0"

__all__ = ["__version__"]
