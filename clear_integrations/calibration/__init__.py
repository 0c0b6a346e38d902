"""Calibration: measure accuracy-at-budget curves of your own model (generators, graders, problem sets)."""

from .calibrate import calibrate, load_generator
from .problems import Problem, gsm8k_sample, load_problems

__all__ = ["Problem", "calibrate", "gsm8k_sample", "load_generator", "load_problems"]
