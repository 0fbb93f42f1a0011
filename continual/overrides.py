"""Which training-config overrides a retrain request may carry, with the limits the typed fields have.

A retrain runs the active model's own recipe; ops may tune its optimisation and the semi-supervised weights, not
where it writes (`output_dir`, `name`), what it trains on, or the step budget (the request's `iterations` field,
capped). Checked in the API process at submit time (no torch), so a bad override is a 422 naming it, not a
failed job later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Allowed:
    """One overridable key: its type and inclusive bounds."""

    kind: type
    low: float
    high: float

    def parse(self, key: str, text: str) -> bool | int | float:
        if self.kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(f"override {key} must be true or false, got {text!r}")
            return text.lower() == "true"
        parse: Callable[[str], float] = int if self.kind is int else float
        try:
            value = parse(text)
        except ValueError:
            raise ValueError(f"override {key} must be {'an integer' if self.kind is int else 'a number'}") from None
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise ValueError(f"override {key}={text} is outside [{self.low:g}, {self.high:g}]")
        return value


ALLOWED: dict[str, Allowed] = {
    "optim.lr": Allowed(float, 1e-7, 1.0),
    "optim.batch_size": Allowed(int, 1, 512),
    "optim.weight_decay": Allowed(float, 0.0, 1.0),
    "optim.warmup_iterations": Allowed(int, 0, 1_000_000),
    "optim.grad_clip": Allowed(float, 1e-6, 1e3),
    "eval.flip_test": Allowed(bool, 0, 1),
    "method.params.lambda_u": Allowed(float, 0.0, 100.0),
    "method.params.lambda_m": Allowed(float, 0.0, 100.0),
    "method.params.rampup_steps": Allowed(int, 0, 1_000_000),
    "method.params.confidence_threshold": Allowed(float, 0.0, 1.0),
    "method.params.seed": Allowed(int, 0, 2**31 - 1),
}


def check_overrides(values: list[str]) -> list[str]:
    """The overrides as given, after checking each `key=value` against ALLOWED; ValueError names the first bad
    one (an unknown key, a path-bearing key, a value out of its bounds)."""
    seen = set()
    for item in values:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        if key not in ALLOWED:
            raise ValueError(f"override {key!r} is not allowed in a retrain; allowed: {sorted(ALLOWED)}")
        if key in seen:
            raise ValueError(f"override {key!r} is given twice")
        seen.add(key)
        ALLOWED[key].parse(key, text.strip())
    return values
