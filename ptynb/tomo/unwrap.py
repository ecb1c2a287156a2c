"""Moved to :mod:`ptynb.imaging` (kept as a re-export for old imports; use ``ptynb.imaging``)."""
from ..imaging import remove_phase_ramp, unwrap_phase, wrap_phase  # noqa: F401

__all__ = ["remove_phase_ramp", "unwrap_phase", "wrap_phase"]
