"""Instruction data for causal language models: files of prompts and responses, chats or plain text.

A data file (JSONL, or CSV with a header) holds one example per row in one of
three forms: ``prompt`` + ``response`` (instruction tuning), ``messages`` (a
chat: a list of ``{"role", "content"}`` whose last message is the assistant's
response; in CSV a JSON text), or ``text`` (continued pre-training: the loss
is on every token). An optional ``group`` column partitions the rows across
sites. Every row is checked before anything trains; the first bad row stops
the read with one error naming the file, the row and the column.

The bundled labelled corpora become instruction tasks through
:data:`TEMPLATES`: the prompt asks for the label and the response is the label
word. When the responses come from a small closed set, that set is kept as
the candidates that evaluation scores by likelihood (see :func:`closed_set`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedelta.common.data import Corpus, load_bundled

ROLES = ("system", "user", "assistant")
MAX_CANDIDATES = 16
MIN_REPEATS = 4
FORMS = ("prompt + response", "messages", "text")
Message = tuple[str, str]


@dataclass(frozen=True)
class Template:
    """How a labelled corpus becomes instructions: a prompt around its text, a word for each label."""

    prompt: str
    words: Mapping[str, str]
    max_chars: int = 2000


TEMPLATES: dict[str, Template] = {
    "rotten-tomatoes": Template(
        "Review: {text}\nIs this review positive or negative? Answer:",
        {"fresh": "positive", "rotten": "negative"},
    ),
    "bbc-news": Template(
        "Article: {text}\nWhich topic is this article about: business, entertainment, politics, sport or tech? Answer:",
        {"business": "business", "entertainment": "entertainment", "politics": "politics", "sport": "sport",
         "tech": "tech"},
        max_chars=1500,
    ),
}


@dataclass(frozen=True)
class Conversations:
    """Examples for a causal LM: the messages before each response (none for plain text), the response,
    a group per example, and the closed set of responses when there is one."""

    prompts: list[tuple[Message, ...]]
    responses: list[str]
    groups: list[str]
    candidates: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.responses)

    def subset(self, indices: list[int]) -> Conversations:
        return Conversations(
            [self.prompts[i] for i in indices], [self.responses[i] for i in indices],
            [self.groups[i] for i in indices], self.candidates,
        )

    @property
    def labels(self) -> list[int]:
        """Each response's index among the candidates (what a label-mix partition splits by)."""
        if not self.candidates:
            raise ValueError("these responses are not a small closed set, so there are no labels to partition by; "
                             "use data.partition = movie (a group column) or iid")
        return [self.candidates.index(response) for response in self.responses]

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.candidates


def closed_set(prompts: list[tuple[Message, ...]], responses: list[str]) -> tuple[str, ...]:
    """The distinct responses, sorted, when they are a small closed set: every example has a prompt, there
    are 2 to :data:`MAX_CANDIDATES` of them, and each comes back at least :data:`MIN_REPEATS` times on
    average. Otherwise none (open-ended responses have no accuracy)."""
    distinct = sorted(set(responses))
    if not all(prompts) or not 2 <= len(distinct) <= MAX_CANDIDATES or len(distinct) * MIN_REPEATS > len(responses):
        return ()
    return tuple(distinct)


def from_labelled(corpus: Corpus, template: Template) -> Conversations:
    """A labelled corpus as instructions: the template's prompt around each text, the label's word as response."""
    missing = [name for name in corpus.label_names if name not in template.words]
    if missing:
        raise ValueError(f"the instruction template has no word for label(s) {missing}")
    prompts = [(("user", template.prompt.format(text=text[: template.max_chars])),) for text in corpus.texts]
    responses = [template.words[corpus.label_names[label]] for label in corpus.labels]
    candidates = tuple(sorted(template.words[name] for name in corpus.label_names))
    return Conversations(prompts, responses, list(corpus.groups), candidates)


def load_bundled_instructions(name: str) -> Conversations:
    """A bundled corpus (``rotten-tomatoes``, ``bbc-news``) as an instruction task."""
    return from_labelled(load_bundled(name), TEMPLATES[name])


def load_instruction_file(path: Path) -> Conversations:
    """Every row of a JSONL or CSV instruction file, checked; a ``ValueError`` names the first bad row and column."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    rows = _rows(path)
    if not rows:
        raise ValueError(f"data file {str(path)!r} holds no rows")
    prompts, responses, groups = [], [], []
    for number, row in rows:
        prompt, response = _example(path, number, row)
        prompts.append(prompt)
        responses.append(response)
        groups.append(str(row.get("group") or ""))
    return Conversations(prompts, responses, groups, closed_set(prompts, responses))


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(row number, row) pairs; JSONL rows are numbered by line, CSV rows by line after the header."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"data file {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"data file {str(path)!r}, row {number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"data file {str(path)!r}, row {number}: a row must be a JSON object")
            rows.append((number, row))
        return rows
    return [(number, row) for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2)]


def _where(path: Path, number: int, column: str) -> str:
    return f"data file {str(path)!r}, row {number}, column {column!r}"


def _text(path: Path, number: int, row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        found = "missing" if value is None else "empty" if isinstance(value, str) else f"a {type(value).__name__}"
        raise ValueError(f"{_where(path, number, column)}: must be non-empty text, found {found}")
    return value


def _example(path: Path, number: int, row: Mapping[str, Any]) -> tuple[tuple[Message, ...], str]:
    """One row as (messages before the response, response), in whichever form the row has."""
    if "messages" in row and row["messages"] not in (None, ""):
        return _chat(path, number, row["messages"])
    if "prompt" in row or "response" in row:
        return (("user", _text(path, number, row, "prompt")),), _text(path, number, row, "response")
    if "text" in row:
        return (), _text(path, number, row, "text")
    present = ", ".join(repr(key) for key in row) or "none"
    raise ValueError(f"data file {str(path)!r}, row {number}: needs the column(s) of one form "
                     f"({'; '.join(FORMS)}); found {present}")


def _chat(path: Path, number: int, messages: Any) -> tuple[tuple[Message, ...], str]:
    where = _where(path, number, "messages")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON list ({error.msg})") from None
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError(f"{where}: must be a list of at least two messages")
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: message {index} must be {{\"role\": one of {list(ROLES)}, \"content\": text}}")
        turns.append((message["role"], message["content"]))
    if turns[-1][0] != "assistant" or not turns[-1][1].strip():
        raise ValueError(f"{where}: the last message must be the assistant's non-empty response")
    return tuple(turns[:-1]), turns[-1][1]
