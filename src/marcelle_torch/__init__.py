"""PyTorch models in Marcelle web apps, three ways, from one model definition."""

__version__ = "0.1.0"
