"""Training methods: small compositions over the one training loop (training/engine.py).

A method is registered by name with `@register_method` and built with `build_method(name, student, **params)`.
"""
from __future__ import annotations

from typing import Callable

from training.methods.base import LabeledBatch, Method, StepOutput, UnlabeledBatch

_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise KeyError(f"method {name!r} registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        _REGISTRY[name] = cls
        cls.method_name = name
        return cls

    return add


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def build_method(name: str, student, **params) -> Method:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {available_methods()}")
    return _REGISTRY[name](student, **params)


from training.methods import akm, continual, dsph, posecons, posedual, supervised, trs  # noqa: E402,F401  (presets)

__all__ = ["LabeledBatch", "Method", "StepOutput", "UnlabeledBatch", "available_methods", "build_method",
           "register_method"]
