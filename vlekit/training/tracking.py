"""Experiment trackers (``train.report_to``): checking the names, and what a run reports to them
(the config as flat hyper-parameters, the ``metrics.jsonl`` records as scalars)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlekit.runs.experiment import ExperimentConfig, flat_options

TRACKING_DIR = "tracking"  # OUT/tracking/<run name>/: what file-based trackers (TensorBoard, ...) write


def check_trackers(report_to: str | Iterable[str]) -> list[str]:
    """``train.report_to`` as a list of Accelerate tracker names, each supported and installed."""
    import importlib.util

    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    names = [report_to] if isinstance(report_to, str) else list(report_to)
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"train.report_to: unknown tracker {name!r}; supported: {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        # Accelerate skips a tracker whose package is missing with a log line: make it an error instead.
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"train.report_to: tracker {name!r} needs its package: pip install {name.replace('_', '-')}")
    return names


def flat_hyperparameters(config: ExperimentConfig) -> dict[str, bool | int | float | str]:
    """The resolved config as ``{"train.lr": 1e-5, "model.fusion.name": "co-attention", ...}``: the
    scalar values trackers take as hyper-parameters (lists as JSON text, ``None`` as ``"None"``)."""
    return flat_options(config.to_dict())


def tracked_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A ``metrics.jsonl`` record as tracker scalars: ``train/loss``, ``train/lr``, ...,
    ``val/accuracy`` (the step is the tracker's own axis)."""
    return {("val/accuracy" if key == "val_accuracy" else f"train/{key}"): float(value)
            for key, value in record.items() if key != "step" and isinstance(value, (int, float))}
