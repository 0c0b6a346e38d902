"""Graders: is a model's answer text right, given the gold answer?

- GSM8K (:func:`grade_gsm8k`): numeric match. The answer is the last number in the text (inside the last
  ``\\boxed{...}`` when the text has one), with ``,``, ``$`` and a sentence-ending ``.`` stripped; it is right
  when it equals the gold number (``18``, ``18.00`` and ``$18`` all match ``18``).
- MATH (:func:`grade_math`): boxed-answer match. The answer is the content of the last ``\\boxed{...}`` (braces
  balanced; an unclosed box gives no answer). Both sides are normalised (spaces, ``\\left``/``\\right``,
  ``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\text{...}`` unwrapped, a trailing ``.0``, ``$``, ``^\\circ``, ...) and
  compared as strings, and as numbers when both parse (``10.0`` = ``10``, ``\\frac{1}{2}`` = ``0.5``).
  The gold answer may itself be a boxed text or plain LaTeX.

:func:`grader_for` picks the grader of a problem kind; every grader has the signature
``(text: str, gold: str) -> bool``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction

from ..errors import InvalidInput

__all__ = [
    "Grader",
    "extract_boxed",
    "extract_last_number",
    "grade_gsm8k",
    "grade_math",
    "grader_for",
    "normalize_math",
    "parse_number",
]

Grader = Callable[[str, str], bool]

_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?\$?\s?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_SLASH = re.compile(r"^(-?\d+)/(-?\d+)$")
_DECIMAL = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)$")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_TRAILING_ZEROS = re.compile(r"(\d)\.0+(?!\d)")
_REL_TOL = 1e-6


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` as a plain decimal string (``"$1,234.50."`` -> ``"1234.50"``), or None."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return str(matches[-1]).replace(",", "").replace("$", "").replace(" ", "")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces; None if absent or unclosed."""
    starts = [match.end() for match in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for position in range(start, len(text)):
            char = text[position]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start:position]
    return None


def parse_number(text: str) -> float | None:
    """A number from a normalised answer: ``12``, ``-0.5``, ``3/4``, ``\\frac{3}{4}``, ``1,000``; else None."""
    candidate = text.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text) else text
    if _DECIMAL.match(candidate):
        return float(candidate)
    fraction = _FRAC.match(candidate) or _SLASH.match(candidate)
    if fraction is None:
        return None
    groups = fraction.groups()
    sign = -1.0 if len(groups) == 3 and groups[0] == "-" else 1.0
    numerator, denominator = int(groups[-2]), int(groups[-1])
    if denominator == 0:
        return None
    return sign * float(Fraction(numerator, denominator))


def _numbers_equal(left: float, right: float) -> bool:
    return math.isclose(left, right, rel_tol=_REL_TOL, abs_tol=1e-9)


def normalize_math(answer: str) -> str:
    """A canonical string for a LaTeX final answer (see the module docstring for what is removed)."""
    text = answer.strip()
    boxed = extract_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    text = text.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("\\$", "")
    text = text.replace("$", "")
    previous = None
    while previous != text:
        previous = text
        text = _TEXT.sub(r"\1", text)
    text = re.sub(r"\s+", "", text)
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)  # \frac12 -> \frac{1}{2}
    text = text.rstrip(".")
    return _TRAILING_ZEROS.sub(r"\1", text)


def grade_gsm8k(text: str, gold: str) -> bool:
    """Numeric match: the last number of ``text`` (of its last box, if any) equals the gold number."""
    gold_number = extract_last_number(gold)
    if gold_number is None:
        raise InvalidInput("gold", gold, "holds no number to compare with")
    boxed = extract_boxed(text)
    answer = extract_last_number(boxed) if boxed is not None else None
    if answer is None:
        answer = extract_last_number(text)
    if answer is None:
        return False
    return _numbers_equal(float(answer), float(gold_number))


def grade_math(text: str, gold: str) -> bool:
    """Boxed-answer match: the last ``\\boxed{...}`` of ``text`` equals ``gold`` after normalisation."""
    boxed = extract_boxed(text)
    if boxed is None:
        return False
    answer = normalize_math(boxed)
    expected = normalize_math(gold)
    if not answer:
        return False
    if answer == expected:
        return True
    left, right = parse_number(answer), parse_number(expected)
    return left is not None and right is not None and _numbers_equal(left, right)


_GRADERS: dict[str, Grader] = {"gsm8k": grade_gsm8k, "math": grade_math}


def grader_for(kind: str) -> Grader:
    """The grader of a problem kind: ``"gsm8k"`` (numeric) or ``"math"`` (boxed)."""
    try:
        return _GRADERS[kind]
    except KeyError:
        raise InvalidInput("kind", kind, f"has no grader; known kinds: {', '.join(sorted(_GRADERS))}") from None
