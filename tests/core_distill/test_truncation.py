"""Case F (issue 21): rows over the length limits keep what matters (BOS, the system turn, the last user turn,
the completion's end-of-turn), are counted in the preflight and the run's metrics, or are refused by choice."""

from __future__ import annotations

import json

import pytest

from core_distill import metric_keys as mk
from core_distill.data.batches import encode_rows
from core_distill.data.sources import DataError
from core_distill.reporting import NullReporter
from core_distill.spec import DistillSpec
from tests.helpers.chat_templates import FAMILIES, build_family_tokenizer
from tests.tiny_models import build_model

BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def build_llama3_style_tokenizer():
    """Character-level, with Llama-3's structure: BOS before everything (text and chat), header tokens,
    <|eot_id|> closing each turn, <|end_of_text|> as EOS."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOT, "<|pad|>"]
    chars = sorted(set(string.ascii_letters + string.digits + " .,?!:\n"))
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|pad|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # newlines too
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token="<|end_of_text|>",
                                        pad_token="<|pad|>", additional_special_tokens=specials[2:5])  # fmt: skip
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


tokenizer = build_llama3_style_tokenizer()
SYSTEM = {"role": "system", "content": "Be brief."}


def conversation(turns: int, last: str = "What now?") -> list[dict]:
    messages = [SYSTEM]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Question {i} is long."},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    return messages + [{"role": "user", "content": last}, {"role": "assistant", "content": "Done."}]


def encode(rows, **limits):
    limits = {"max_prompt_length": 512, "max_completion_length": 512, "source": "rows.jsonl", **limits}
    return encode_rows(rows, tokenizer, **limits)


def text(ids: list[int]) -> str:
    return tokenizer.decode(ids)


HEAD = f"{BOS}<|start_header_id|>system<|end_header_id|>\n\nBe brief.{EOT}"
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_a_long_conversation_keeps_bos_the_system_turn_and_the_last_turn_dropping_the_oldest():
    (full,) = encode([{"messages": conversation(4)}])
    (short,) = encode([{"messages": conversation(4)}], max_prompt_length=len(full.prompt_ids) - 10)
    kept = text(short.prompt_ids)
    assert kept.startswith(HEAD) and kept.endswith(f"What now?{EOT}{ASSISTANT_HEADER}")
    assert "Question 0" not in kept and "Question 3 is long." in kept  # whole oldest turns go, the newest stay
    # the kept history starts with a whole user turn right after the system turn
    assert kept.index("Question") == len(HEAD) + len("<|start_header_id|>user<|end_header_id|>\n\n")
    assert short.prompt_cut and not full.prompt_cut


def test_one_long_user_turn_is_cut_in_its_middle_keeping_both_ends():
    last = "Start here. " + "x" * 200 + " End here?"
    (e,) = encode([{"messages": conversation(2, last)}], max_prompt_length=80)
    kept = text(e.prompt_ids)
    assert len(e.prompt_ids) == 80
    assert kept.startswith(HEAD + "<|start_header_id|>user<|end_header_id|>\n\n")  # the oldest turns went first
    assert kept.endswith(f"End here?{EOT}{ASSISTANT_HEADER}") and "Question" not in kept


def test_a_text_prompt_keeps_its_bos_and_its_end():
    (e,) = encode([{"prompt": "abcdefghij" * 5, "completion": "ok"}], max_prompt_length=8)
    assert text(e.prompt_ids) == f"{BOS}defghij"


def test_a_long_completion_keeps_its_end_of_turn():
    row = {"messages": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "y" * 100}]}
    (e,) = encode([row], max_completion_length=10)
    assert text(e.completion_ids) == "y" * 9 + EOT
    assert e.completion_cut


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cut_completions_end_with_the_familys_end_of_turn_every_turn(name):
    """Qwen, Gemma and Phi-3 write '\n' after their end of turn: the cut keeps the end-of-turn token
    (the one generation stops at), not what the template writes after it."""
    family_tokenizer = build_family_tokenizer(name)
    talk = [
        {"role": "user", "content": "First?"}, {"role": "assistant", "content": "a" * 40},
        {"role": "user", "content": "Second?"}, {"role": "assistant", "content": "b" * 40},
    ]  # fmt: skip
    rows = [{"messages": talk}, {"prompt": "Third?", "completion": "c" * 40}]
    examples = encode_rows(rows, family_tokenizer, max_prompt_length=512, max_completion_length=8, source="rows.jsonl",
                           assistant_turns="all")  # fmt: skip
    end = family_tokenizer.convert_tokens_to_ids(FAMILIES[name].end_of_turn)
    # the kept start may hold a template's opening (Qwen3's empty <think> block); the text runs up to the cut
    assert [family_tokenizer.decode(e.completion_ids[:-1])[-1] for e in examples] == ["a", "b", "c"]
    assert all(len(e.completion_ids) == 8 and e.completion_ids[-1] == end and e.completion_cut for e in examples)


def test_refuse_names_the_file_the_row_and_the_limit():
    rows = [{"messages": conversation(0)}, {"messages": conversation(6)}]
    with pytest.raises(DataError, match=r"rows.jsonl, row 2: the prompt is \d+ tokens, over max_prompt_length 60"):
        encode(rows, max_prompt_length=60, truncation="refuse")
    long_answer = [{"prompt": "Hi", "completion": "z" * 30}]
    with pytest.raises(DataError, match="row 1: the completion is 31 tokens, over max_completion_length 20"):
        encode(long_answer, max_completion_length=20, truncation="refuse")


@pytest.fixture(scope="module")
def chat_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    build_model(root / "student", tokenizer, hidden=64, layers=1, seed=1)
    build_model(root / "teacher", tokenizer, hidden=64, layers=1, seed=2)
    rows = [{"messages": conversation(6)}, {"messages": conversation(0)}, {"messages": conversation(5)}]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def chat_spec(root, **fields) -> DistillSpec:
    return DistillSpec(student=str(root / "student"), teacher=str(root / "teacher"), train_data=str(root / "train.jsonl"),
                       eval_data="", max_prompt_length=60, max_steps=1, batch_size=3, lmbda=0.0, save_every=0,
                       eval_every=0, **fields)  # fmt: skip


def test_preflight_counts_the_rows_it_shortens_and_refuses_them_by_choice(chat_workspace):
    notes = chat_spec(chat_workspace).preflight()
    assert notes == {"train_data": notes["train_data"]} and notes["train_data"].startswith(
        "2 of the first 3 rows have a prompt over max_prompt_length 60, 0 a completion over max_completion_length 512"
    )
    from core_distill.spec import SpecError

    with pytest.raises(SpecError) as caught:
        chat_spec(chat_workspace, truncation="refuse").preflight()
    assert "row 1: the prompt is" in caught.value.errors["train_data"]


class Metrics(NullReporter):
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.logged.append(metrics)


def test_the_run_logs_how_many_of_its_rows_were_shortened(chat_workspace, tmp_path):
    reporter = Metrics()
    from core_distill.train import run

    run(chat_spec(chat_workspace, max_completion_length=4), output_dir=tmp_path, reporter=reporter)
    (step,) = reporter.logged
    assert step[mk.DATA_TRUNCATED_PROMPTS] == 2 and step[mk.DATA_TRUNCATED_COMPLETIONS] == 3
