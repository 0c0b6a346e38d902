"""Accuracy-at-budget curves: empirical curves and batches, concave hulls, parametric families and their fits."""

from .curve import AccuracyCurve, CurveBatch, EmpiricalCurve, isotonic
from .families import Logistic, ShiftedSurge
from .fitting import LogisticFit, SurgeFit, fit_logistic, fit_shifted_surge, fit_tau

__all__ = [
    "AccuracyCurve",
    "CurveBatch",
    "EmpiricalCurve",
    "Logistic",
    "LogisticFit",
    "ShiftedSurge",
    "SurgeFit",
    "fit_logistic",
    "fit_shifted_surge",
    "fit_tau",
    "isotonic",
]
