"""The data sets an option file may name, and how a ``{type: Name, **kwargs}`` block builds one."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from training.config import OptionsError
from training.data import PhantomPairs, RegisteredDicomPairs, ThinnedDicomPairs

__all__ = ["DATASETS", "build_dataset"]

DATASETS: dict[str, type[Dataset[Any]]] = {
    "PhantomPairs": PhantomPairs,
    "ThinnedDicomPairs": ThinnedDicomPairs,
    "RegisteredDicomPairs": RegisteredDicomPairs,
}


def build_dataset(block: dict[str, Any], *, where: str) -> Dataset[Any]:
    """Build the data set a block names; errors name ``where`` (e.g. ``data.train``)."""
    kwargs = dict(block)
    name = kwargs.pop("type")
    if name not in DATASETS:
        raise OptionsError(f"{where}.type: {name!r} is not one of {sorted(DATASETS)}")
    for key in ("crop", "speeds_cm_min"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    try:
        return DATASETS[name](**kwargs)
    except (TypeError, ValueError, FileNotFoundError) as exc:
        raise OptionsError(f"{where}: {name} cannot be built ({exc})") from None
