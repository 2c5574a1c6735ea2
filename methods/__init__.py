"""Methods: networks, losses and the method registry."""

from methods.registry import create_method, list_methods, register_method, resolve_method

__all__ = ["create_method", "list_methods", "register_method", "resolve_method"]
