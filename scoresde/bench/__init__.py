"""Benchmark engine (an intermediate step: runner.py holds the former scoresde/bench.py whole)."""

from . import runner as _runner

globals().update({k: v for k, v in vars(_runner).items() if not k.startswith("__")})
__all__ = _runner.__all__
