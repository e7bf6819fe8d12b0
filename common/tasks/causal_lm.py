"""Causal-LM instruction tuning: prompts rendered (chat template where the tokenizer has one), loss on the
response tokens only, and evaluation by response-token loss, perplexity and, for a closed set of responses,
accuracy by the likelihood of each candidate.

Rendering: with ``task.chat-template`` on and a tokenizer that has a template,
the prompt is the template applied to the messages before the response (with
the assistant's turn opened) and the response is what the template adds for
the assistant's message (its end-of-turn marker included). Otherwise the
prompt is the messages' contents joined by blank lines, the response follows
after one space (none when the prompt ends in whitespace) and ends with the
tokenizer's end-of-sequence token. A plain-text example has no prompt: every
token carries loss. Prompt and response are tokenized separately, the same way
in training and evaluation; an example longer than ``model.max-length`` keeps
its response and the end of its prompt.
"""

from __future__ import annotations

import inspect
import math
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fedelta.common.config import Settings
from fedelta.common.devices import autocast_for, device_of, to_device
from fedelta.common.instructions import Conversations, Message, load_bundled_instructions, load_instruction_file
from fedelta.common.model import ModelBundle, load_causal_lm
from fedelta.common.tasks.registry import TASKS, Evaluation
from fedelta.common.training import TrainResult, fit, shuffled

IGNORED = -100  # label of a position that carries no loss (prompt tokens, padding)
EVAL_BATCH = 16


class Renderer:
    """Turns (messages, response) into token ids with the number of prompt tokens."""

    def __init__(self, tokenizer: object, chat: bool, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.chat = chat and bool(getattr(tokenizer, "chat_template", None))
        self.max_length = max_length
        self.end = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "sep_token", None) or ""

    def texts(self, prompt: tuple[Message, ...], response: str) -> tuple[str, str]:
        """The prompt's text and the response's text, as the model sees them."""
        if not prompt:
            return "", response + self.end
        if self.chat:
            messages = [{"role": role, "content": content} for role, content in prompt]
            opened = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            whole = self.tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            )
            if not whole.startswith(opened):
                raise ValueError("the tokenizer's chat template does not extend the prompt with the response; "
                                 "set task.chat-template = false")
            return opened, whole[len(opened):]
        text = "\n\n".join(content for _, content in prompt)
        return text, ("" if text[-1:].isspace() else " ") + response + self.end

    def ids(self, prompt: tuple[Message, ...], response: str) -> tuple[list[int], int]:
        """Token ids of prompt + response (at most ``max_length``) and how many of them are the prompt's."""
        prompt_text, response_text = self.texts(prompt, response)
        prompt_ids = self._encode(prompt_text)
        response_ids = self._encode(response_text)[: self.max_length]
        room = self.max_length - len(response_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - room:] if room > 0 else []
        return prompt_ids + response_ids, len(prompt_ids)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def collate(rows: list[tuple[list[int], int]], pad_id: int, *, left: bool = False) -> dict[str, torch.Tensor]:
    """Padded ``input_ids``, ``attention_mask`` and ``labels`` (prompt and padding ignored); left-padded
    rows also get ``position_ids`` counting from each row's first real token."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORED, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, prompt) in enumerate(rows):
        start = width - len(ids) if left else 0
        span = slice(start, start + len(ids))
        input_ids[row, span] = torch.tensor(ids)
        mask[row, span] = 1
        labels[row, start + prompt:start + len(ids)] = torch.tensor(ids[prompt:])
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if left:
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return batch


def response_span(rows: list[tuple[list[int], int]]) -> int:
    """How many final positions of left-padded ``rows`` hold every response token and the one before it."""
    return max(len(ids) - prompt for ids, prompt in rows) + 1


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether ``model`` computes logits for its last positions only when given ``logits_to_keep``."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def training_batch(rows: list[tuple[list[int], int]], pad_id: int, model: torch.nn.Module) -> dict[str, Any]:
    """A left-padded training batch; where the model allows, its logits and labels cover only the response
    span, which leaves the loss as it is (every other label is ignored) and skips the output layer for the
    prompt."""
    batch: dict[str, Any] = collate(rows, pad_id, left=True)
    if keeps_logits(model):
        span = response_span(rows)
        batch["labels"] = batch["labels"][:, -span:]
        batch["logits_to_keep"] = span
    return batch


@torch.no_grad()
def response_log_likelihoods(model: torch.nn.Module, rows: list[tuple[list[int], int]], pad_id: int) -> list[tuple[float, int]]:
    """For each row, the summed log-likelihood of its response tokens given what precedes them, and their count.

    Rows are left-padded so every response ends the sequence; only the logits
    of the last positions are computed where the model allows it.
    """
    batch = collate(rows, pad_id, left=True)
    labels = batch.pop("labels")
    span = response_span(rows)
    keep = {"logits_to_keep": span} if keeps_logits(model) else {}
    device = device_of(model)
    with autocast_for(device):
        logits = model(**to_device(batch, device), **keep).logits[:, -span:].float().cpu()
    targets = labels[:, -span:]
    scores = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    counted = targets[:, 1:] != IGNORED
    return [(float(scores[i][counted[i]].sum()), int(counted[i].sum())) for i in range(len(rows))]


def cache_keyword(model: torch.nn.Module) -> str | None:
    """The name under which ``model.forward`` takes and returns its key-value cache (transformers renamed
    ``past_key_values`` to ``cache``), or ``None`` where it names neither (a wrapper passing keywords on)."""
    named = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in named), None)


@torch.no_grad()
def candidate_log_likelihoods(model: torch.nn.Module, examples: list[list[tuple[list[int], int]]],
                              pad_id: int) -> list[list[tuple[float, int]]]:
    """:func:`response_log_likelihoods` of each example's candidate rows, which share one non-empty prompt:
    the prompts run once, and every candidate continues from their cached keys and values.

    The first response token's likelihood comes from the prompt pass; the
    remaining ones from a second pass over each candidate's tokens but its
    last, right-padded after the prompts' cache repeated once per candidate.
    """
    count = len(examples[0])
    prompts = [(rows[0][0][:rows[0][1]], 0) for rows in examples]
    batch = collate(prompts, pad_id, left=True)
    batch.pop("labels")
    keep = {"logits_to_keep": 1} if keeps_logits(model) else {}
    device = device_of(model)
    cache_name = cache_keyword(model)
    with autocast_for(device):
        start = model(**to_device(batch, device), use_cache=True, **keep)
    first = torch.log_softmax(start.logits[:, -1].float().cpu(), dim=-1)
    responses = [ids[prompt:] for rows in examples for ids, prompt in rows]
    scores = [first[k // count, response[0]].item() for k, response in enumerate(responses)]
    width = max(len(response) for response in responses) - 1
    if width:
        cache = getattr(start, cache_name)
        cache.batch_repeat_interleave(count)
        follow = torch.full((len(responses), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(responses), width), dtype=torch.long)
        for row, response in enumerate(responses):
            follow[row, :len(response) - 1] = torch.tensor(response[:-1])
            mask[row, :len(response) - 1] = 1
        lengths = batch["attention_mask"].sum(-1).repeat_interleave(count)
        inputs = {"input_ids": follow,
                  "attention_mask": torch.cat([batch["attention_mask"].repeat_interleave(count, dim=0), mask], dim=-1),
                  "position_ids": lengths[:, None] + torch.arange(width)}
        with autocast_for(device):
            logits = model(**to_device(inputs, device), **{cache_name: cache}).logits.float().cpu()
        steps = torch.log_softmax(logits, dim=-1)
        for row, response in enumerate(responses):
            targets = torch.tensor(response[1:])
            scores[row] += float(steps[row, torch.arange(len(targets)), targets].sum())
    found = [(score, len(response)) for score, response in zip(scores, responses)]
    return [found[k * count:(k + 1) * count] for k in range(len(examples))]


def _one_prompt(rows: list[tuple[list[int], int]]) -> bool:
    """Whether candidate rows share one non-empty prompt and each has a response token."""
    ids, prompt = rows[0]
    return prompt > 0 and all(own == prompt and row[:own] == ids[:prompt] and len(row) > own for row, own in rows)


class CausalLM:
    """Instruction tuning of a pretrained causal LM; version 0 is exactly its pretrained weights."""

    peft_task_type = "CAUSAL_LM"
    metric_names = ("accuracy", "loss", "perplexity")
    takes_sparse_base = False
    export_class = "AutoModelForCausalLM"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tokenizer: Any = None  # read once, then shared by every model this task loads

    def load_data(self) -> Conversations:
        data = self.settings.data
        return load_instruction_file(Path(data.path)) if data.path else load_bundled_instructions(data.name)

    def load_file(self, path: Path, labels: tuple[str, ...] | None = None) -> Conversations:
        return load_instruction_file(path)

    def load_model(self, num_labels: int, seed: int) -> ModelBundle:
        model, self._tokenizer = load_causal_lm(self.settings.model.source, seed, self._tokenizer)
        return ModelBundle(model=model, tokenizer=self._tokenizer, head=[])

    def renderer(self, bundle: ModelBundle) -> Renderer:
        return Renderer(bundle.tokenizer, self.settings.task.chat_template, self.settings.model.max_length)

    def batches(self, bundle: ModelBundle, data: Conversations, seed: int) -> Iterator[dict[str, Any]]:
        render, pad = self.renderer(bundle), bundle.tokenizer.pad_token_id
        for chosen in shuffled(len(data), self.settings.local.batch_size, seed):
            yield training_batch([render.ids(data.prompts[i], data.responses[i]) for i in chosen], pad,
                                 bundle.model)

    def train(self, bundle: ModelBundle, data: Conversations, optimizer: torch.optim.Optimizer, *, steps: int,
              seed: int) -> TrainResult:
        if len(data) == 0:
            raise ValueError("cannot train on an empty data set")
        return fit(bundle.model, self.batches(bundle, data, seed), optimizer, steps=steps, seed=seed)

    def evaluate(self, bundle: ModelBundle, data: Conversations) -> Evaluation:
        """Mean response-token loss and its perplexity; with candidates, accuracy by their likelihood."""
        if len(data) == 0:
            return Evaluation(examples=0, loss=0.0)
        bundle.model.eval()
        render, pad = self.renderer(bundle), bundle.tokenizer.pad_token_id
        options = data.candidates if data.candidates else ()
        scored: dict[tuple[int, str], tuple[float, int]] = {}
        rendered = {i: [render.ids(data.prompts[i], r) for r in options] for i in range(len(data))} if options else {}
        shared = [i for i, rows in rendered.items() if _one_prompt(rows)] if cache_keyword(bundle.model) else []
        for start in range(0, len(shared), EVAL_BATCH):
            chunk = shared[start:start + EVAL_BATCH]
            found = candidate_log_likelihoods(bundle.model, [rendered[i] for i in chunk], pad)
            scored.update(((i, r), score) for i, scores in zip(chunk, found) for r, score in zip(options, scores))
        alone = set(range(len(data))) - set(shared)
        rows = [(i, response) for i in sorted(alone) for response in (options or (data.responses[i],))]
        for start in range(0, len(rows), EVAL_BATCH):
            chunk = rows[start:start + EVAL_BATCH]
            found = response_log_likelihoods(bundle.model, [render.ids(data.prompts[i], r) for i, r in chunk], pad)
            scored.update(zip(chunk, found))
        nll = sum(-scored[(i, data.responses[i])][0] for i in range(len(data)))
        tokens = sum(scored[(i, data.responses[i])][1] for i in range(len(data)))
        loss = nll / max(tokens, 1)
        accuracy = None
        if options:
            right = sum(max(options, key=lambda r: scored[(i, r)][0]) == data.responses[i] for i in range(len(data)))
            accuracy = right / len(data)
        return Evaluation(examples=len(data), loss=loss, accuracy=accuracy, perplexity=math.exp(min(loss, 50.0)))

    def calibration_texts(self, bundle: ModelBundle, data: Conversations, count: int, seed: int) -> list[str]:
        render = self.renderer(bundle)
        chosen = random.Random(seed).sample(range(len(data)), min(count, len(data)))
        return [render.texts(data.prompts[i], data.responses[i])[0] or data.responses[i] for i in chosen]

    def describe(self, data: Conversations) -> str:
        if data.candidates:
            counts = Counter(data.responses)
            return f"{len(data)} examples ({', '.join(f'{c} {counts[c]}' for c in data.candidates)})"
        plain = sum(1 for prompt in data.prompts if not prompt)
        return f"{len(data)} examples ({len(data) - plain} with a prompt, {plain} plain text)"


TASKS.register(
    "causal-lm",
    summary="causal-LM instruction tuning: no new head; prompt+response, chat messages or text; loss on "
    "response tokens; loss, perplexity and (closed set of responses) accuracy by candidate likelihood",
    reference="Ouyang et al. 2022, Training language models to follow instructions (supervised fine-tuning)",
)(CausalLM)
