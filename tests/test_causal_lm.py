"""Causal-LM instruction tuning: rendering, prompt masking, evaluation by candidate likelihood, data checks, export."""

import io
import json
import zipfile

import pytest
import torch

from fedelta.common.config import Settings
from fedelta.common.delta import model_params, state_hash
from fedelta.common.instructions import MAX_CANDIDATES, Conversations, load_instruction_file
from fedelta.common.tasks import task_for
from fedelta.common.tasks.causal_lm import IGNORED, Renderer, candidate_log_likelihoods, collate, training_batch
from rounds import open_federation, run_rounds

CAUSAL = {"task.name": "causal-lm", "model.path": "tiny-llama", "model.max-length": 48, "local.lr": 1e-3}
CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture
def task(tiny_settings):
    return task_for(tiny_settings.with_overrides(CAUSAL))


@pytest.fixture
def bundle(task):
    return task.load_model(0, seed=0)


def test_prompt_tokens_and_padding_carry_no_loss(bundle):
    render = Renderer(bundle.tokenizer, chat=False, max_length=48)
    rows = [render.ids((("user", "Is it good?"),), "yes"), render.ids((("user", "A much longer question here?"),), "no")]
    batch = collate(rows, bundle.tokenizer.pad_token_id)
    for row, (ids, prompt) in enumerate(rows):
        labels = batch["labels"][row]
        assert (labels[:prompt] == IGNORED).all() and (labels[len(ids):] == IGNORED).all()
        assert labels[prompt:len(ids)].tolist() == ids[prompt:]
    loss = bundle.model(**batch).loss
    logits = bundle.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=IGNORED)
    torch.testing.assert_close(loss, expected)
    assert int((targets != IGNORED).sum()) == sum(len(ids) - prompt for ids, prompt in rows)


def test_a_training_batch_computes_the_response_logits_only_and_the_same_loss(bundle):
    render = Renderer(bundle.tokenizer, chat=False, max_length=48)
    rows = [render.ids((("user", "Is it good?"),), "yes, it is"),
            render.ids((("user", "A much longer question than the first one here?"),), "no")]
    pad = bundle.tokenizer.pad_token_id
    batch = training_batch(rows, pad, bundle.model)
    span = max(len(ids) - prompt for ids, prompt in rows) + 1
    assert batch["logits_to_keep"] == span and batch["labels"].shape == (2, span)
    assert (batch["labels"][:, 0] == IGNORED).all()  # the position before the longest response is a prompt's
    assert int((batch["labels"] != IGNORED).sum()) == sum(len(ids) - prompt for ids, prompt in rows)
    output = bundle.model(**batch)
    assert output.logits.shape[1] == span
    torch.testing.assert_close(output.loss, bundle.model(**collate(rows, pad)).loss)

    class NoLogitsToKeep(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None):
            raise AssertionError("not called")

    whole = training_batch(rows, pad, NoLogitsToKeep())
    assert "logits_to_keep" not in whole and whole["labels"].shape == whole["input_ids"].shape


def test_without_a_template_the_response_follows_the_prompt_and_ends_the_sequence(bundle):
    render = Renderer(bundle.tokenizer, chat=True, max_length=48)  # the tiny model's tokenizer has no template
    assert render.texts((("user", "Answer:"),), "positive") == ("Answer:", " positive" + render.end)
    assert render.texts((), "plain text") == ("", "plain text" + render.end)


def test_the_chat_template_is_applied_when_present_and_the_setting_turns_it_off(bundle):
    bundle.tokenizer.chat_template = CHAT
    prompt = (("system", "Be brief."), ("user", "Is it good?"))
    chat = Renderer(bundle.tokenizer, chat=True, max_length=48)
    assert chat.texts(prompt, "yes") == ("<system>Be brief.</system><user>Is it good?</user><assistant>",
                                         "yes</assistant>")
    plain = Renderer(bundle.tokenizer, chat=False, max_length=48)
    assert plain.texts(prompt, "yes")[0] == "Be brief.\n\nIs it good?"


def test_a_long_example_keeps_its_response_and_the_end_of_its_prompt(bundle):
    render = Renderer(bundle.tokenizer, chat=False, max_length=12)
    ids, prompt = render.ids((("user", " ".join(["word"] * 40) + " question?"),), "answer")
    response = render._encode(" answer" + render.end)
    assert len(ids) == 12 and ids[prompt:] == response and ids[:prompt][-1] == render._encode("?")[0]


def test_accuracy_is_the_likelier_candidate_and_loss_is_on_the_true_responses(task, bundle):
    data = Conversations(
        [(("user", "Review: great fun\nAnswer:"),), (("user", "Review: dull and slow\nAnswer:"),),
         (("user", "Review: fine"),)],
        ["positive", "negative", "positive"], ["a", "b", "c"], ("negative", "positive"),
    )
    result = task.evaluate(bundle, data)
    render = task.renderer(bundle)
    model = bundle.model

    def log_likelihood(i: int, response: str) -> tuple[float, int]:
        ids, prompt = render.ids(data.prompts[i], response)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        scores = torch.log_softmax(logits[:-1], -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        return float(scores[prompt - 1:].sum()), len(ids) - prompt

    unpadded = {(i, r): log_likelihood(i, r) for i in range(3) for r in data.candidates}
    right = sum(max(data.candidates, key=lambda r: unpadded[(i, r)][0]) == data.responses[i] for i in range(3))
    nll = -sum(unpadded[(i, data.responses[i])][0] for i in range(3))
    tokens = sum(unpadded[(i, data.responses[i])][1] for i in range(3))
    assert result.examples == 3 and result.accuracy == right / 3
    assert result.loss == pytest.approx(nll / tokens, rel=1e-4)
    assert result.perplexity == pytest.approx(torch.exp(torch.tensor(nll / tokens)).item(), rel=1e-4)
    assert set(result.metrics()) == {"num-examples", "loss", "accuracy", "perplexity"}


def _unpadded_log_likelihood(model, ids: list[int], prompt: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return float(torch.log_softmax(logits[:-1], -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])][prompt - 1:].sum())


def test_candidates_continuing_one_cached_prompt_score_as_each_scored_alone(task, bundle):
    render = Renderer(bundle.tokenizer, chat=False, max_length=48)
    candidates = ("no", "yes, without any doubt at all", "not really")
    prompts = ["Is it good?", "A much longer question, with several more words in it?", "Why?"]
    examples = [[render.ids((("user", p),), c) for c in candidates] for p in prompts]
    found = candidate_log_likelihoods(bundle.model, examples, bundle.tokenizer.pad_token_id)
    assert len({len(ids) - prompt for ids, prompt in examples[0]}) == 3  # three response lengths
    for rows, scores in zip(examples, found, strict=True):
        for (ids, prompt), (score, tokens) in zip(rows, scores, strict=True):
            assert tokens == len(ids) - prompt
            assert score == pytest.approx(_unpadded_log_likelihood(bundle.model, ids, prompt), abs=1e-4)


def test_a_model_that_names_no_cache_is_scored_row_by_row_to_the_same_result(task, bundle):
    from dataclasses import replace

    from fedelta.common.tasks.causal_lm import cache_keyword

    class PassingKeywordsOn(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    data = Conversations([(("user", "Review: great fun"),), (("user", "Review: dull"),)], ["positive", "negative"],
                         ["a", "b"], ("negative", "positive"))
    wrapped = replace(bundle, model=PassingKeywordsOn(bundle.model))
    assert cache_keyword(bundle.model) is not None and cache_keyword(wrapped.model) is None
    direct, by_rows = task.evaluate(bundle, data), task.evaluate(wrapped, data)
    assert by_rows.accuracy == direct.accuracy and by_rows.loss == pytest.approx(direct.loss, rel=1e-4)


def test_an_example_whose_prompt_is_cut_differently_per_candidate_is_scored_row_by_row(tiny_settings):
    task = task_for(tiny_settings.with_overrides({**CAUSAL, "model.max-length": 12}))
    bundle = task.load_model(0, seed=0)
    render = task.renderer(bundle)
    data = Conversations([(("user", "short"),), (("user", " ".join(f"word{i}" for i in range(30))),)],
                         ["no", "yes, without any doubt"], ["a", "b"], ("no", "yes, without any doubt"))
    cut = [render.ids(data.prompts[1], r) for r in data.candidates]
    assert cut[0][0][:cut[0][1]] != cut[1][0][:cut[1][1]]  # the longer response leaves less of the prompt
    result = task.evaluate(bundle, data)
    nll = -sum(_unpadded_log_likelihood(bundle.model, *render.ids(data.prompts[i], data.responses[i])) for i in range(2))
    tokens = sum(len(ids) - prompt for ids, prompt in (render.ids(data.prompts[i], data.responses[i]) for i in range(2)))
    assert result.loss == pytest.approx(nll / tokens, rel=1e-4)


def test_open_ended_responses_have_loss_and_perplexity_but_no_accuracy(task, bundle):
    responses = [f"answer number {i}" for i in range(MAX_CANDIDATES + 1)]
    data = Conversations([(("user", f"q{i}"),) for i in range(len(responses))], responses, ["g"] * len(responses))
    result = task.evaluate(bundle, data)
    assert result.accuracy is None and result.perplexity > 1 and "accuracy" not in result.metrics()


def test_the_bundled_corpus_is_an_instruction_task_with_label_words(task):
    data = task.load_data()
    assert data.candidates == ("negative", "positive") and len(data) == 12808
    assert data.prompts[0][0][1].startswith("Review: ") and data.prompts[0][0][1].endswith("positive or negative? Answer:")


def _write(tmp_path, name: str, rows: list, raw: str | None = None):
    path = tmp_path / name
    path.write_text(raw if raw is not None else "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_the_three_forms_of_rows_read_with_groups(tmp_path):
    path = _write(tmp_path, "mixed.jsonl", [
        {"prompt": "Say hi", "response": "hi", "group": "clinic-a"},
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"},
                      {"role": "assistant", "content": "Hello!"}], "group": "clinic-b"},
        {"text": "Plain notes to continue pre-training on."},
    ])
    data = load_instruction_file(path)
    assert data.prompts == [(("user", "Say hi"),), (("system", "Be kind."), ("user", "Hello")), ()]
    assert data.responses == ["hi", "Hello!", "Plain notes to continue pre-training on."]
    assert data.groups == ["clinic-a", "clinic-b", ""] and data.candidates == ()
    csv = tmp_path / "chat.csv"
    csv.write_text('messages,group\n"[{""role"": ""user"", ""content"": ""2+2?""}, '
                   '{""role"": ""assistant"", ""content"": ""4""}]",x\n', encoding="utf-8")
    assert load_instruction_file(csv).responses == ["4"]


def test_label_like_responses_are_a_closed_set_and_open_ones_are_not(tmp_path):
    labelled = [{"prompt": f"Review {i}", "response": "yes" if i % 2 else "no"} for i in range(8)]
    assert load_instruction_file(_write(tmp_path, "labels.jsonl", labelled)).candidates == ("no", "yes")
    few = labelled[:6]  # 2 answers, 6 rows: under 4 rows per answer on average
    assert load_instruction_file(_write(tmp_path, "few.jsonl", few)).candidates == ()
    with_text = labelled + [{"text": "no"}]
    assert load_instruction_file(_write(tmp_path, "text.jsonl", with_text)).candidates == ()


@pytest.mark.parametrize("rows, raw, fragment", [
    ([{"prompt": "q", "response": "a"}, {"prompt": "q2"}], None, "row 2, column 'response': must be non-empty text, found missing"),
    ([{"prompt": "q", "response": ""}], None, "row 1, column 'response': must be non-empty text, found empty"),
    ([{"prompt": 7, "response": "a"}], None, "row 1, column 'prompt': must be non-empty text, found a int"),
    ([{"question": "q", "answer": "a"}], None, "row 1: needs the column(s) of one form"),
    ([{"messages": "not json"}], None, "row 1, column 'messages': not a JSON list"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], None, "row 1, column 'messages': must be a list of at least two"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}], None,
     "row 1, column 'messages': the last message must be the assistant's"),
    ([{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "a"}]}], None,
     "row 1, column 'messages': message 0 must be"),
    (None, '{"prompt": "q", "response": "a"}\n{broken\n', "row 2: not JSON"),
    (None, '["a list"]\n', "row 1: a row must be a JSON object"),
    (None, "", "holds no rows"),
])
def test_a_bad_file_gets_one_error_naming_the_file_row_and_column(tmp_path, rows, raw, fragment):
    path = _write(tmp_path, "bad.jsonl", rows or [], raw)
    with pytest.raises(ValueError, match="data file") as error:
        load_instruction_file(path)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_a_file_that_is_not_utf8_or_missing_is_named(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt,response\ncaf\xe9,ok\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_instruction_file(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_instruction_file(tmp_path / "absent.jsonl")


def test_two_federated_rounds_keep_server_and_sites_on_one_hash(tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides({**CAUSAL, "rounds": 2})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 3))
        assert coordinator.head.id == 2 and state_hash(coordinator.params) == coordinator.head.sha
        assert all(site.state.load_version().sha == coordinator.head.sha for site in sites)
        row = coordinator.store.round_records()[-1]
        assert {"accuracy", "loss", "perplexity"} <= set(row) and row["perplexity"] > 1


def test_an_exported_version_is_a_text_generation_pipeline(tiny_settings, tmp_path):
    from transformers import pipeline

    from fedelta.server.console.export import export_version
    from fedelta.server.store import VersionStore

    settings = tiny_settings.with_overrides({**CAUSAL, "rounds": 1})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 2))
        head = coordinator.head
    buffer = io.BytesIO()
    store = VersionStore.attach(tmp_path / "state")
    try:
        name = export_version(store, head.id, buffer)
    finally:
        store.close()
    zipfile.ZipFile(buffer).extractall(tmp_path / "export")
    folder = tmp_path / "export" / name
    generate = pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    assert state_hash(model_params(generate.model)) == head.sha
    prompt = "Review: great\nIs this review positive or negative? Answer:"
    made = generate(prompt, max_new_tokens=3, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    given = generate.tokenizer(prompt)["input_ids"]
    assert made[:len(given)] == given and len(made) == len(given) + 3


@pytest.mark.parametrize(("overrides", "labels"), [({}, 2), (CAUSAL, 0)])
def test_a_task_reads_its_tokenizer_once_and_builds_the_same_version_0_each_time(tiny_settings, overrides, labels,
                                                                                 monkeypatch):
    from fedelta.common import model as model_module

    task = task_for(tiny_settings.with_overrides(overrides))
    reads, read = [], model_module._tokenizer
    monkeypatch.setattr(model_module, "_tokenizer", lambda resolved: reads.append(resolved) or read(resolved))
    first, second = task.load_model(labels, seed=0), task.load_model(labels, seed=0)
    assert len(reads) == 1 and second.tokenizer is first.tokenizer
    assert second.model is not first.model
    assert state_hash(model_params(second.model)) == state_hash(model_params(first.model))
