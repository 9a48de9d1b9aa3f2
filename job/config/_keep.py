"""How a frozen config section keeps what its parsers return (every section of :mod:`job.config` uses it)."""
from __future__ import annotations

from typing import Any


def keep(section: object, **values: Any) -> None:
    """A frozen section keeps what its parsers returned (``"cam_front"`` is stored as ``("CAM_FRONT",)``), so what
    the stages read is what was checked (``tests/test_config.py``)."""
    for name, value in values.items():
        object.__setattr__(section, name, value)
