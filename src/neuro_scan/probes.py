"""Probes: sets of prompts with objectively checkable answers.

Our probe file format (JSON)::

    {
      "name": "math",
      "description": "What the probe measures",
      "group": "general",                 # or "demo" (probes for the built-in demo model)
      "samples": [
        {"prompt": "Q: 17 + 25 =", "answer": " 42", "category": "arithmetic"},
        {"prompt": "...", "answer": " joy", "choices": [" joy", " fear"], "category": "emotion"}
      ]
    }

The answer is the exact continuation of the prompt (it may span several tokens). With
``choices`` the sample is multiple choice: the answer must be one of the choices and the
sample is correct when the answer is the most probable choice.

The reference tool's format (``"scoring": "digits"``, one digit 0-9 per answer) is read too,
so users' existing files keep working: each sample becomes a ten-way choice over "0".."9".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from neuro_scan.errors import UsageError

DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Sample:
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    category: str = ""


@dataclass(frozen=True)
class Probe:
    name: str
    description: str
    samples: tuple[Sample, ...]
    group: str = "general"
    source: str = "built-in"
    digit_scoring: bool = False  # reference format: also report the expected digit E[d]

    @property
    def where(self) -> str:
        """The probe as error messages name it: its file, or the built-in's name."""
        return f"built-in probe {self.name}" if self.source == "built-in" else f"probe file {self.source}"

    @property
    def answer_type(self) -> str:
        if self.digit_scoring:
            return "digit 0-9"
        if all(s.choices for s in self.samples):
            return "multiple choice"
        if any(s.choices for s in self.samples):
            return "exact / multiple choice"
        return "exact continuation"

    def limited(self, max_samples: int | None) -> Probe:
        """The first ``max_samples`` samples (all of them when None)."""
        if max_samples is None or max_samples >= len(self.samples):
            return self
        return replace(self, samples=self.samples[:max_samples])


def _builtin_dir():
    return resources.files("neuro_scan") / "data" / "probes"


def builtin_probe_names() -> list[str]:
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".json"))


def load_builtin(name: str) -> Probe:
    path = _builtin_dir() / f"{name}.json"
    if not path.is_file():
        raise UsageError(
            f"--probe: unknown probe '{name}'; built-in probes are {', '.join(builtin_probe_names())} "
            "(or give a JSON file with --custom-probe)"
        )
    return parse_probe(json.loads(path.read_text(encoding="utf-8")), f"built-in probe {name}", "built-in")


def load_probe_file(path: str | Path) -> Probe:
    """Read and validate a custom probe file (ours or the reference's format)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"probe file {path}: is a folder, not a JSON file")
    if not path.is_file():
        raise UsageError(f"probe file {path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"probe file {path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"probe file {path}: not a probe file (its JSON is nested too deeply to read)") from None
    return parse_probe(data, f"probe file {path}", str(path))


DEFAULT_PROBE = "math"


def resolve_probe(name: str | None, custom_probe: str | Path | None = None) -> Probe:
    """A probe from ``--probe NAME`` (default: math) or ``--custom-probe FILE``; a name ending in
    .json is a file. Both together are a contradiction, not a choice we make for the user."""
    if custom_probe is not None:
        if name is not None:
            raise UsageError(f"--probe and --custom-probe: give one of them, not both (got --probe {name} and "
                             f"--custom-probe {custom_probe})")
        return load_probe_file(custom_probe)
    name = DEFAULT_PROBE if name is None else name
    if name.endswith(".json") or "/" in name:
        return load_probe_file(name)
    return load_builtin(name)


def parse_probe(data: object, where: str, source: str) -> Probe:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: the top level must be a JSON object with 'name' and 'samples'")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"{where}: field 'name' is missing or not a non-empty string")
    raw_samples = data.get("samples")
    if not isinstance(raw_samples, list) or not raw_samples:
        raise UsageError(f"{where}: field 'samples' must be a non-empty list")
    digit_scoring = data.get("scoring") == "digits"
    if "scoring" in data and not digit_scoring:
        raise UsageError(f"{where}: field 'scoring' must be \"digits\" (the reference format) when given")
    parse = _parse_digit_sample if digit_scoring else _parse_sample
    samples = tuple(parse(raw, f"{where}: sample {i}") for i, raw in enumerate(raw_samples))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UsageError(f"{where}: field 'description' must be a string")
    group = data.get("group", "general")
    if not isinstance(group, str):
        raise UsageError(f"{where}: field 'group' must be a string")
    return Probe(name=name, description=description, samples=samples, group=group,
                 source=source, digit_scoring=digit_scoring)


def _text_field(raw: dict, key: str, where: str, allow_empty: bool = False) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise UsageError(f"{where}: field '{key}' is missing or not a non-empty string")
    return value


def _parse_sample(raw: object, where: str) -> Sample:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: must be a JSON object")
    prompt = _text_field(raw, "prompt", where)
    answer = _text_field(raw, "answer", where)
    choices = raw.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) and c for c in choices):
        raise UsageError(f"{where}: field 'choices' must be a list of non-empty strings")
    if choices and answer not in choices:
        raise UsageError(f"{where}: the answer {answer!r} is not one of its choices")
    if choices and len(set(choices)) != len(choices):
        raise UsageError(f"{where}: field 'choices' has duplicates")
    category = raw.get("category", "")
    return Sample(prompt=prompt, answer=answer, choices=tuple(choices), category=str(category))


def _parse_digit_sample(raw: object, where: str) -> Sample:
    """A reference-format sample: the answer is one digit 0-9 after the prompt."""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: must be a JSON object")
    suffix = raw.get("scoring_suffix", "")
    if not isinstance(suffix, str):
        raise UsageError(f"{where}: field 'scoring_suffix' must be a string")
    prompt = _text_field(raw, "prompt", where) + suffix
    answer = raw.get("correct_answer", raw.get("expected_score"))
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    if isinstance(answer, float) and 0 <= answer <= 9:
        answer = round(answer)  # the reference keys some answers as e.g. 7.5: the nearest digit is gold
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer <= 9:
        raise UsageError(
            f"{where}: a digits probe needs 'correct_answer' (or 'expected_score') as a whole number 0-9"
        )
    category = raw.get("metadata", {}).get("category", "") if isinstance(raw.get("metadata"), dict) else ""
    return Sample(prompt=prompt, answer=str(answer), choices=DIGITS, category=str(category))
