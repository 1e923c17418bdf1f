"""Where a completion ends, chat template errors and every-turn training, on tokenizers with the real
families' chat templates (tests/helpers/chat_templates.py) and tiny random models.

The tests of cases B, C, D and I of issue 21 use only what main had (they fail there on behaviour, not
on an import); the new functions are imported inside the tests that need them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core_distill import metric_keys as mk
from core_distill.data.batches import encode_rows, make_batch
from core_distill.data.sources import DataError
from core_distill.generation.stops import eos_token_ids
from core_distill.models import load_model, load_tokenizer
from core_distill.reporting import JsonlReporter
from core_distill.spec import DistillSpec, SpecError
from core_distill.train import completion_stats, load_examples, run
from tests.helpers.chat_templates import FAMILIES, build_family_tokenizer, byte_level_tokenizer
from tests.tiny_models import build_model, write_jsonl

LIMITS = dict(max_prompt_length=512, max_completion_length=512, source="rows.jsonl")


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def saved_tokenizer(name: str, root: Path):
    """The family's tokenizer as the engine loads it: saved, then read back by path."""
    build_family_tokenizer(name, root / name)
    return load_tokenizer(str(root / name))


def family_models(name: str, root: Path) -> tuple[Path, Path]:
    """A tiny random student and teacher with the family's tokenizer, saved under `root`."""
    tokenizer = build_family_tokenizer(name)
    student, teacher = root / f"{name}-student", root / f"{name}-teacher"
    build_model(student, tokenizer, hidden=64, layers=1, seed=1)
    build_model(teacher, tokenizer, hidden=64, layers=1, seed=2)
    return student, teacher


def tiny_spec(student: Path, teacher: Path, data: Path, **overrides) -> DistillSpec:
    fields = dict(student=str(student), teacher=str(teacher), train_data=str(data), eval_data="", max_new_tokens=8,
                  max_steps=1, batch_size=2, grad_accum=1, eval_every=0, save_every=0)  # fmt: skip
    return DistillSpec(**(fields | overrides))


# --- end of turn ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_end_of_turn_is_read_from_each_familys_template(name, tmp_path):
    from core_distill.data.chat_turns import end_of_turn_id

    tokenizer = saved_tokenizer(name, tmp_path)
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == FAMILIES[name].end_of_turn


def test_without_a_template_or_a_special_token_after_the_answer_the_end_of_turn_is_eos():
    from core_distill.data.chat_turns import end_of_turn_id

    bare = byte_level_tokenizer(["<|endoftext|>"], eos="<|endoftext|>")
    plain = byte_level_tokenizer(["<|endoftext|>"], eos="<|endoftext|>",
                                 template="{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}")  # fmt: skip
    for tokenizer in (bare, plain):
        assert end_of_turn_id(tokenizer) == tokenizer.eos_token_id


# --- case B: text completions end like the template's turns ----------------------------------------
@pytest.mark.parametrize("name", ["gemma2", "llama3", "phi3", "qwen2.5"])
def test_text_completions_end_with_the_turn_end_not_eos(name, tmp_path):
    tokenizer = saved_tokenizer(name, tmp_path)
    end = FAMILIES[name].end_of_turn
    question = [{"role": "user", "content": "2+2?"}]
    rows = [
        {"prompt": question, "completion": [{"role": "assistant", "content": "4"}]},
        {"prompt": question, "completion": "4"},
        {"prompt": "2+2=", "completion": "4"},
    ]
    as_messages, as_text, plain = encode_rows(rows, tokenizer, **LIMITS)
    assert tokenizer.decode(as_text.completion_ids) == "4" + end  # what on-policy samples stop at
    assert tokenizer.decode(plain.completion_ids) == "4" + end
    assert as_messages.completion_ids == as_text.completion_ids


# --- case I and D: completions end at a stop token, off- and on-policy -------------------------------
@pytest.mark.parametrize("name", ["qwen2.5", "gemma2", "phi3"])
def test_dataset_completions_end_at_a_stop_token_and_train_nothing_after_it(name, tmp_path):
    """The template's '\\n' (and Phi-3's final EOS) after the end of turn is not trained, so each
    completion ends in a stop token and completion/eos_rate counts it."""
    tokenizer = saved_tokenizer(name, tmp_path)
    student = load_model(str(family_models(name, tmp_path)[0]), dtype=torch.float32)
    rows = [chat(("user", f"{a}+1?"), ("assistant", str(a + 1))) for a in range(4)]
    examples = encode_rows(rows, tokenizer, **LIMITS)
    assert [tokenizer.decode(e.completion_ids) for e in examples] == [
        f"{a + 1}{FAMILIES[name].end_of_turn}" for a in range(4)
    ]
    _, ended = completion_stats([[e.completion_ids for e in examples]], eos_token_ids(student, tokenizer))
    assert ended == [True] * 4


def test_a_run_on_qwen_chat_data_counts_its_dataset_completions_as_ended(tmp_path):
    student, teacher = family_models("qwen2.5", tmp_path)
    data = write_jsonl(
        tmp_path / "chat.jsonl", [chat(("user", f"{a}+1?"), ("assistant", str(a + 1))) for a in range(4)]
    )
    run(
        tiny_spec(student, teacher, data, lmbda=0.0),
        output_dir=tmp_path / "out",
        reporter=JsonlReporter(tmp_path / "out"),
    )
    (line,) = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert line["metrics"][mk.COMPLETION_EOS_RATE] == 1.0


def always_says(path: Path, token: int) -> None:
    """Rig the saved model at `path` to predict `token` after anything: every layer adds nothing to the
    residual stream, every embedding is the same vector, and only `token`'s lm_head row sees it."""
    model = load_model(str(path), dtype=torch.float32)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                weight.zero_()
        model.get_input_embeddings().weight.fill_(1.0)
        head = model.get_output_embeddings().weight
        head.zero_()
        head[token] = 1.0
    model.save_pretrained(path)


def test_a_base_student_stops_at_the_templates_turn_end_on_policy(tmp_path):
    """A Qwen3-Base-like student (EOS <|endoftext|> alone, the chat template of the family) stops at
    <|im_end|>: its samples end there instead of running to max_new_tokens, and so does the data."""
    tokenizer = saved_tokenizer("qwen3-base", tmp_path)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id != im_end
    student, teacher = family_models("qwen3-base", tmp_path)
    always_says(student, im_end)
    rows = [chat(("user", f"{a}+1?"), ("assistant", str(a + 1))) for a in range(4)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "out"
    run(tiny_spec(student, teacher, data, lmbda=1.0), output_dir=out, reporter=JsonlReporter(out))
    (line,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert line["metrics"][mk.COMPLETION_LENGTH_MEAN] == 1.0  # <|im_end|> alone, not 8 tokens past it
    assert line["metrics"][mk.COMPLETION_EOS_RATE] == 1.0
    (example, *_) = encode_rows(rows, tokenizer, **LIMITS)  # and the data's completions end there too
    assert tokenizer.decode(example.completion_ids) == "<think>\n\n</think>\n\n1<|im_end|>"


# --- case C: template errors are one-line data errors ------------------------------------------------
SYSTEM_ROW = chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))


@pytest.mark.parametrize(
    ("name", "row", "said", "way_out"),
    [
        ("gemma2", SYSTEM_ROW, "System role not supported", "system_message: fold"),
        ("mistral", SYSTEM_ROW, "Conversation roles must alternate", "system_message: fold"),
        ("mistral", chat(("user", "a"), ("user", "b"), ("assistant", "c")), "Conversation roles must alternate",
         "user and assistant alternating"),
    ],
)  # fmt: skip
def test_a_template_that_refuses_a_row_is_a_one_line_preflight_error(name, row, said, way_out, tmp_path):
    student, teacher = family_models(name, tmp_path)
    data = write_jsonl(tmp_path / "chat.jsonl", [chat(("user", "Hi"), ("assistant", "Hello")), row])
    with pytest.raises(SpecError) as caught:
        tiny_spec(student, teacher, data, lmbda=0.0).preflight()
    message = caught.value.errors["train_data"]
    assert str(data) in message and "row 2" in message and said in message and way_out in message
    assert "\n" not in message and len(message) < 400


def test_folding_the_system_message_lets_gemma2_and_mistral_take_the_row(tmp_path):
    from core_distill.data.chat_turns import fold_system_messages

    assert fold_system_messages(SYSTEM_ROW["messages"])[0] == {"role": "user", "content": "Be brief.\n\nHi"}
    rendered = {
        "gemma2": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n",
        "mistral": "<s>[INST] Be brief.\n\nHi [/INST]",
    }
    for name, prompt in rendered.items():
        student, teacher = family_models(name, tmp_path)
        data = write_jsonl(tmp_path / f"{name}.jsonl", [SYSTEM_ROW])
        spec = tiny_spec(student, teacher, data, lmbda=0.0, system_message="fold")
        spec.preflight()
        (example,), _ = load_examples(spec, load_tokenizer(spec.student))
        tokenizer = load_tokenizer(spec.student)
        assert tokenizer.decode(example.prompt_ids) == prompt
        assert tokenizer.decode(example.completion_ids) == "Hello" + FAMILIES[name].end_of_turn


def test_a_refused_row_past_the_preflights_preview_is_a_data_error_at_load(tmp_path):
    student, teacher = family_models("gemma2", tmp_path)
    rows = [chat(("user", "Hi"), ("assistant", "Hello"))] * 40 + [SYSTEM_ROW]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    spec = tiny_spec(student, teacher, data, lmbda=0.0)
    spec.preflight()  # the preflight reads the first rows only
    with pytest.raises(SpecError, match="row 41: the student's chat template refused it"):
        load_examples(spec, load_tokenizer(spec.student))
    with pytest.raises(DataError, match="System role not supported"):
        encode_rows([SYSTEM_ROW], load_tokenizer(spec.student), **LIMITS)


# --- item 7: every assistant turn -------------------------------------------------------------------
CONVERSATION = chat(("user", "a?"), ("assistant", "<think>x</think>b"), ("user", "c?"), ("assistant", "d"))


def test_every_assistant_turn_is_an_example_with_the_history_the_template_renders(tmp_path):
    tokenizer = saved_tokenizer("qwen3", tmp_path)
    (last,) = encode_rows([CONVERSATION], tokenizer, **LIMITS)
    first, second = encode_rows([CONVERSATION], tokenizer, **LIMITS, assistant_turns="all")
    assert (second.prompt_ids, second.completion_ids) == (last.prompt_ids, last.completion_ids)
    assert tokenizer.decode(first.prompt_ids) == "<|im_start|>user\na?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(first.completion_ids) == "<think>\nx\n</think>\n\nb<|im_end|>"
    # in the second turn's history the first answer is drawn as Qwen3 draws past turns: no thinking
    assert tokenizer.decode(second.prompt_ids) == (
        "<|im_start|>user\na?<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tokenizer.decode(second.completion_ids) == "<think>\n\n</think>\n\nd<|im_end|>"
    assert (first.completion_text, second.completion_text) == ("<think>x</think>b", "d")


def test_every_turn_training_trains_each_answer_and_no_user_token(tmp_path):
    student, teacher = family_models("llama3", tmp_path)
    data = write_jsonl(tmp_path / "chat.jsonl", [CONVERSATION, chat(("user", "e?"), ("assistant", "f"))])
    tokenizer = load_tokenizer(str(student))
    for turns, answers in (("last", ["d", "f"]), ("all", ["<think>x</think>b", "d", "f"])):
        spec = tiny_spec(student, teacher, data, lmbda=0.0, assistant_turns=turns)
        spec.preflight()
        train, _ = load_examples(spec, tokenizer)
        batch = make_batch([e.prompt_ids for e in train], [e.completion_ids for e in train], tokenizer.pad_token_id)
        trained = [
            tokenizer.decode(row[mask]) for row, mask in zip(batch.completion_ids, batch.completion_mask, strict=True)
        ]
        assert trained == [a + "<|eot_id|>" for a in answers]
    with pytest.raises(SpecError, match="assistant_turns"):
        DistillSpec.parse({"teacher": "", "opsd": "fixed", "assistant_turns": "all"})
