"""Higgs.net: a VPN whose exit nodes are ordinary PCs behind home routers."""

__version__ = "0.1.0"
__all__ = ["__version__"]
