"""Recipe tests per model family (torchtune-style): `distill run` on a tiny pair of each family's
architecture, tokenizer and chat template (tests/helpers/families.py), a few mixed on/off-policy steps.

Each run pins what a team meets on its first real pair:
  - the trained tokens of every dataset row are the last assistant turn's content and the family's
    end-of-turn token: nothing of the prompt, nothing after the turn's end (a template's trailing "\\n",
    Phi-3's eos after `<|end|>\\n`), for messages completions and string completions alike;
  - generation stops at the end-of-turn token, which the generation config does not list: the student
    emits it first, so every on-policy sample is that one token (a run that stops elsewhere samples it
    again up to max_new_tokens);
  - completion/eos_rate is 1 on dataset and on-policy batches alike.
The trained tokens are read where the loss gets them (train.micro_batch_loss: the rows whose completion
mask the batch is built from), recorded and passed on unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from core_distill import metric_keys as mk
from core_distill import train
from core_distill.cli import engine_cli
from tests.helpers.families import FAMILIES, FamilyPair, expected_training, write_jsonl


@dataclass
class TrainedRow:
    source: str  # "dataset" or "student" (on-policy)
    prompt_ids: list[int]
    completion_ids: list[int]  # the tokens the loss trains: the completion mask's


@dataclass
class Run:
    result: Result
    out: Path
    trained: list[TrainedRow]

    def metrics(self) -> list[dict[str, float]]:
        import json

        lines = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines()]
        return [line["metrics"] for line in lines if mk.LOSS in line["metrics"]]


def distill_run(pair: FamilyPair, folder: Path, monkeypatch: pytest.MonkeyPatch, **overrides) -> Run:
    """`distill run SPEC` in this process, recording the rows each micro-batch's loss trains."""
    spec_file = folder / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(pair.spec_fields(**overrides)))
    trained: list[TrainedRow] = []
    original = train.micro_batch_loss

    def recording(spec, student, teacher, tokenizer, examples, completions, source, *rest):
        trained.extend(TrainedRow(source, e.prompt_ids, list(c)) for e, c in zip(examples, completions, strict=True))
        return original(spec, student, teacher, tokenizer, examples, completions, source, *rest)

    monkeypatch.setattr(train, "micro_batch_loss", recording)
    out = folder / "run"
    result = CliRunner().invoke(engine_cli, ["run", str(spec_file), "--output", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return Run(result, out, trained)


def check_recipe(pair: FamilyPair, run: Run) -> None:
    """(a) trained tokens, (b) the stop token, (c) eos_rate; every problem found is listed in one failure."""
    tokenizer, end_of_turn = pair.tokenizer, pair.family.end_of_turn
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    dataset = [r for r in run.trained if r.source == train.DATASET]
    sampled = [r for r in run.trained if r.source == train.STUDENT]
    assert dataset and sampled, f"seed 3 draws both kinds of batch, got {sorted({r.source for r in run.trained})}"
    problems = []

    # (a) every row trains exactly its answer and the end-of-turn token, after the prompt the template renders
    expected = expected_training(pair.rows, tokenizer, end_of_turn)
    trained = {decode(r.prompt_ids): decode(r.completion_ids) for r in dataset}
    if set(trained) != set(expected):
        problems.append(f"trained prompts are not the template's generation prompts: {sorted(trained)}")
    problems += [f"(a) ...{prompt[-30:]!r} trains {got!r}, not {expected[prompt]!r}"
                 for prompt, got in trained.items() if got != expected.get(prompt, got)]  # fmt: skip

    # (b) generation stops at the end-of-turn token (the student's first and only sample)
    if any(r.completion_ids != [pair.end_of_turn_id] for r in sampled):
        problems.append(f"(b) on-policy samples do not stop at {end_of_turn!r}: "
                        f"{[decode(r.completion_ids) for r in sampled]}")  # fmt: skip
    eos_rates = [m[mk.COMPLETION_EOS_RATE] for m in run.metrics()]
    if eos_rates != [1.0, 1.0]:
        problems.append(f"(c) completion/eos_rate per step is {eos_rates}, not 1.0 (every completion ends its turn)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_recipe_trains_the_assistant_turn_and_stops_at_its_end(name, family_pairs, tmp_path, monkeypatch):
    pair = family_pairs(name)
    check_recipe(pair, distill_run(pair, tmp_path, monkeypatch))


def test_padded_head_pair_distils_on_the_shared_vocabulary(family_pairs, tmp_path, monkeypatch, capfd):
    """Qwen2.5-style: one tokenizer, lm_heads of len(tok) + k1 and len(tok) + k2 (0.5B's 151,936 vs 7B's 152,064)."""
    pair = family_pairs("qwen2.5-padded")
    run = distill_run(pair, tmp_path, monkeypatch)
    check_recipe(pair, run)
    # the run says the vocabulary was cut to the tokenizer's: in its output or a file of the run folder
    files = [p.read_text() for p in run.out.iterdir() if p.suffix in (".json", ".jsonl", ".yaml", ".txt", ".log")]
    said = [run.result.output, *capfd.readouterr(), *files]
    lines = [line for text in said for line in text.splitlines() if "vocab" in line.lower()]
    assert any(str(pair.vocab) in line for line in lines), f"no line names the cut to {pair.vocab}: {lines}"


def test_base_student_stops_at_the_chat_end_of_turn(family_pairs, tmp_path, monkeypatch):
    """Qwen3-Base-style student (eos <|endoftext|> only, chat template present) on chat data, Qwen3 teacher."""
    pair = family_pairs("qwen3-base")
    assert pair.tokenizer.eos_token == "<|endoftext|>"
    check_recipe(pair, distill_run(pair, tmp_path, monkeypatch))


@pytest.mark.parametrize(
    ("name", "bad_row", "message"),
    [
        ("gemma2", [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hi?"},
                    {"role": "assistant", "content": "hello"}], "System role not supported"),
        ("mistral", [{"role": "user", "content": "hi?"}, {"role": "user", "content": "hello?"},
                     {"role": "assistant", "content": "hello"}], "Conversation roles must alternate"),
    ],
    ids=["gemma2-system-turn", "mistral-two-user-turns"],
)  # fmt: skip
def test_a_row_the_template_refuses_is_one_line_naming_file_and_row(name, bad_row, message, family_pairs, tmp_path):
    pair = family_pairs(name)
    data = write_jsonl(tmp_path / "chat.jsonl", [pair.rows[1], {"messages": bad_row}])
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(pair.spec_fields(train_data=str(data))))
    result = CliRunner().invoke(engine_cli, ["run", str(spec_file), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(data) in lines[0] and "row 2" in lines[0] and message in lines[0], lines
    assert not (tmp_path / "run").exists()
