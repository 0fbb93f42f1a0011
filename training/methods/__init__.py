"""Training methods: small compositions over the one training loop (training/engine.py).

A method is registered by name with `@register_method` and built with `build_method(name, student, **params)`.
"""

from __future__ import annotations

from collections.abc import Callable

from core.registry import Registry
from training.methods.base import LabeledBatch, Method, RunContext, StepOutput, UnlabeledBatch

METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        cls.method_name = name
        return METHODS.register(name)(cls)

    return add


def available_methods() -> list[str]:
    return list(METHODS.names())


def build_method(name: str, student, context: RunContext | None = None, **params) -> Method:
    """The registered method `name` training `student`; `params` are its config's `method.params`."""
    return METHODS.get(name)(student, context=context, **params)


from training.methods import akm, continual, dsph, posecons, posedual, supervised, trs  # noqa: E402,F401  (presets)

__all__ = [
    "LabeledBatch",
    "Method",
    "RunContext",
    "StepOutput",
    "UnlabeledBatch",
    "available_methods",
    "build_method",
    "register_method",
]
