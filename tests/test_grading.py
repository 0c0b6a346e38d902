from __future__ import annotations

import pytest

from clear_integrations.calibration.grading import (
    extract_boxed,
    extract_last_number,
    grade_gsm8k,
    grade_math,
    grader_for,
    normalize_math,
    parse_number,
)
from clear_integrations.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 18.", "18"),
        ("She makes $18.00 every day.", "18.00"),
        ("#### 1,234", "1234"),
        ("It costs $1,234.50.", "1234.50"),
        ("5 - 3 = 2", "2"),
        ("the temperature is -5 degrees", "-5"),
        ("half is .5", ".5"),
        ("1,000,000 people", "1000000"),
        ("no digits here", None),
    ],
)
def test_extract_last_number(text: str, number: str | None) -> None:
    assert extract_last_number(text) == number


@pytest.mark.parametrize(
    ("text", "gold", "right"),
    [
        ("Janet sells 9 eggs. 9 * 2 = $18\n#### 18", "18", True),
        ("She makes $18.00.", "18", True),
        ("The answer is 18.", "18", True),
        ("The answer is 18.5", "18", False),
        ("#### 1,234", "1234", True),
        ("So the profit is $70,000.", "70000", True),
        ("\\boxed{ 20 }\\]\n\nSo, 15 more", "20", True),  # the box wins over later numbers
        ("\\boxed{ 16 * 3 * 4 *", "18", False),  # unclosed box: last number of the text
        ("I do not know.", "18", False),
        ("The loss is -3 dollars", "-3", True),
    ],
)
def test_grade_gsm8k(text: str, gold: str, right: bool) -> None:
    assert grade_gsm8k(text, gold) is right


def test_grade_gsm8k_refuses_gold_without_number() -> None:
    with pytest.raises(InvalidInput, match="gold"):
        grade_gsm8k("18", "eighteen")


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}} end", "\\sqrt{\\frac{a}{b}}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{7}", "7"),
        ("\\boxed{\\frac{1}{2}", None),  # unclosed
        ("no box", None),
    ],
)
def test_extract_boxed(text: str, boxed: str | None) -> None:
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize(
    ("text", "gold", "right"),
    [
        ("\\boxed{\\frac{1}{2}}", "\\dfrac{1}{2}", True),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
        ("\\boxed{\\tfrac12}", "\\frac{1}{2}", True),
        ("\\boxed{10}", "10.0", True),
        ("\\boxed{10.0}", "10", True),
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{-\\frac{3}{4}}", "-0.75", True),
        ("\\boxed{3/4}", "\\frac34", True),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{(3,\\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", True),
        ("\\boxed{30^\\circ}", "30", True),
        ("\\boxed{1,000}", "1000", True),
        ("\\boxed{\\sqrt{2}}", "\\sqrt{3}", False),
        ("\\boxed{11}", "10", False),
        ("The answer is 10", "10", False),  # no box, no answer
        ("\\boxed{}", "10", False),
        ("\\boxed{\\frac{1}{2}", "\\frac{1}{2}", False),  # unclosed
    ],
)
def test_grade_math(text: str, gold: str, right: bool) -> None:
    assert grade_math(text, gold) is right


def test_normalize_and_parse() -> None:
    assert normalize_math("\\boxed{ \\dfrac{1}{2} }") == "\\frac{1}{2}"
    assert normalize_math("$12.00$.") == "12"
    assert parse_number("\\frac{6}{4}") == 1.5
    assert parse_number("\\frac{1}{0}") is None
    assert parse_number("x+1") is None


def test_grader_for() -> None:
    assert grader_for("gsm8k") is grade_gsm8k
    assert grader_for("math") is grade_math
    with pytest.raises(InvalidInput, match="kind"):
        grader_for("aime")
