"""Calibration text for the tuned lens: the built-in corpus or a user's .txt/.jsonl file.

The built-in corpus (``data/corpus/``) is public-domain English: Lewis Carroll's *Alice's
Adventures in Wonderland* (1865) and Shakespeare's *As You Like It* (about 1600), as shipped in
the Canterbury compression corpus. It is never a probe's text, so a lens trained on it has not
seen the prompts it is later used on.

A user's corpus is either a ``.txt`` file (one document) or a ``.jsonl`` file: one document per
line, each a JSON object with a string field ``text`` (the format of most text data sets) or a
bare JSON string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from neuro_scan.errors import UsageError

BUILTIN_CORPUS = "built-in"


@dataclass(frozen=True)
class Corpus:
    name: str  # "built-in" or the file's path
    documents: tuple[str, ...]

    @property
    def characters(self) -> int:
        return sum(len(d) for d in self.documents)


def builtin_corpus() -> Corpus:
    folder = resources.files("neuro_scan") / "data" / "corpus"
    texts = [p.read_text(encoding="utf-8") for p in sorted(folder.iterdir(), key=lambda p: p.name)
             if p.name.endswith(".txt")]
    return Corpus(BUILTIN_CORPUS, tuple(texts))


def load_corpus_file(path: str | Path) -> Corpus:
    """Read and check ``--corpus FILE``; every problem is a one-line UsageError."""
    path = Path(path)
    where = f"--corpus: {path}"
    if not path.is_file():
        raise UsageError(f"{where}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise UsageError(f"{where}: must be a .txt file (one document) or a .jsonl file (one document per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8 text") from None
    documents = [text] if suffix == ".txt" else _jsonl_documents(text, where)
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise UsageError(f"{where}: holds no text")
    return Corpus(str(path), tuple(documents))


def _jsonl_documents(text: str, where: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: line {number} is not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise UsageError(f"{where}: line {number} is JSON nested too deeply to read") from None
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            raise UsageError(f"{where}: line {number} must be a JSON string or an object with a string field 'text'")
        documents.append(value)
    return documents


def resolve_corpus(path: str | Path | None) -> Corpus:
    return builtin_corpus() if path is None else load_corpus_file(path)
