"""The memory planner: what a run needs, part by part, and what fits a budget — checked against
measurement (``measure``)."""

from .budget import fitting_settings
from .measure import measure
from .planner import PARTS, MemoryPlan, plan
from .units import gib, parse_bytes

__all__ = ["MemoryPlan", "PARTS", "fitting_settings", "gib", "measure", "parse_bytes", "plan"]
