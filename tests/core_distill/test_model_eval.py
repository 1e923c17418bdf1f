"""The evaluator on a model whose completions are known by construction (tests/helpers/bigram.py):
greedy against a hand-computed case, sampled draws per row and seed, prompts merged, distinct valid
completions, the diversity measure, the prompt-clustered standard error, and a run's evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core_distill import metric_keys as mk
from core_distill.data.batches import encode_rows
from core_distill.data.sources import read_rows
from core_distill.evaluation import EvalContext, answer_matcher, clustered_stderr, diversity_measure, evaluate
from core_distill.generation.stops import eos_token_ids
from core_distill.model_eval import EvalError, ModelReport, evaluate_model
from core_distill.models import load_model, load_tokenizer
from tests.helpers.bigram import build_bigram_model, countdown_rows, p_three

LOG3, LOG2 = math.log(3), math.log(2)
# (prompt, reference): the model writes "-3=0" greedily, and "-3=0" or "-1=0" when it samples
ROWS = [("S=3 m=3", "-3=0"), ("S=3 m=3", "-1=2\n-2=0"), ("S=3 m=2", "-2=1\n-1=0"), ("S=1 m=2", "-1=0")]


@pytest.fixture(scope="module")
def bigram(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigram")
    return str(build_bigram_model(root / "model")), str(countdown_rows(root / "rows.jsonl", ROWS)), root


def _eval(bigram, **kwargs) -> ModelReport:
    model, data, _ = bigram
    return evaluate_model(model, data, teacher=None, metric="countdown", max_new_tokens=8, n_samples=0, **kwargs)


def test_greedy_scores_match_the_hand_computed_case(bigram):
    report = _eval(bigram, temperature=0.0)
    # "-3=0" is valid for S=3 m=3 (both rows), not for S=3 m=2 (step above m) nor S=1 m=2 (step above 1)
    assert report.sampled is None and report.temperature == 0.0
    greedy = report.greedy
    assert (greedy.accuracy, report.accuracy) == (0.5, 0.5)
    assert greedy.completion_length == report.completion_length == 5.0  # '-', '3', '=', '0', EOS
    # clusters [1, 1], [0], [0]: sqrt(3/2 * (1 + 0.25 + 0.25)) / 4
    assert greedy.stderr == pytest.approx(0.375)
    assert greedy.distinct_valid == pytest.approx(1 / 3)
    assert greedy.diversity == pytest.approx(-LOG3)  # log P("-3=0" | S=3 m=3): one step among 3
    assert [(p.prompt, p.rows, p.greedy, p.distinct_valid, p.scores) for p in report.prompts] == [
        ("S=3 m=3", 2, 1.0, 1, []), ("S=3 m=2", 1, 0.0, 0, []), ("S=1 m=2", 1, 0.0, 0, [])]  # fmt: skip
    assert [p.diversity for p in report.prompts] == [pytest.approx(-LOG3), None, None]
    # the references: -3=0 (-log 3), -1=2 -2=0 (-log 3 - log 2), -2=1 -1=0 (-log 2), -1=0 (0)
    assert [p.reference_diversity for p in report.prompts] == [
        pytest.approx(-(2 * LOG3 + LOG2) / 2), pytest.approx(-LOG2), 0.0]  # fmt: skip
    assert report.reference_diversity == pytest.approx(-math.log(6) / 2)
    assert report.diversity == "walk_log_likelihood"


def test_sampled_scores_are_n_times_seeds_per_row_and_merge_rows_of_a_prompt(bigram):
    report = _eval(bigram, temperature=1.0, samples_per_prompt=5, seeds=[0, 1])
    assert report.sampled is not None and report.sampled.seeds == [0, 1] and report.sampled.samples_per_prompt == 5
    by_prompt = {p.prompt: p for p in report.prompts}
    assert list(by_prompt) == ["S=3 m=3", "S=3 m=2", "S=1 m=2"]
    assert [len(p.scores) for p in report.prompts] == [2 * 5 * 2, 5 * 2, 5 * 2]
    all_scores = [s for p in report.prompts for s in p.scores]
    assert report.accuracy == report.sampled.accuracy == pytest.approx(sum(all_scores) / 40)
    assert report.greedy.accuracy == 0.5  # greedy is reported beside the samples
    assert report.sampled.completion_length == 5.0
    # neither "-3=0" nor "-1=0" is a walk of S=3 m=2; "-1=0" is the only one of S=1 m=2
    assert by_prompt["S=3 m=2"].scores == [0] * 10 and by_prompt["S=3 m=2"].distinct_valid == 0
    for prompt, value in (("S=3 m=3", -LOG3), ("S=1 m=2", 0.0)):
        result = by_prompt[prompt]
        assert 0 < sum(result.scores) < len(result.scores)  # both completions were drawn
        assert result.distinct_valid == 1 and result.diversity == pytest.approx(value)
    assert report.sampled.distinct_valid == pytest.approx(2 / 3)
    clusters = [p.scores for p in report.prompts]
    assert report.sampled.stderr == pytest.approx(clustered_stderr(clusters))


def test_a_seed_gives_the_same_draws_whatever_the_other_seeds(bigram):
    both = _eval(bigram, temperature=1.0, samples_per_prompt=4, seeds=[0, 1])
    again = _eval(bigram, temperature=1.0, samples_per_prompt=4, seeds=[0, 1])
    swapped = _eval(bigram, temperature=1.0, samples_per_prompt=4, seeds=[1, 0])
    first = _eval(bigram, temperature=1.0, samples_per_prompt=4, seeds=[0])
    assert [p.scores for p in again.prompts] == [p.scores for p in both.prompts]
    one = both.prompts[0].scores  # rows of a prompt one after the other; in a row, seed by seed, 4 each
    assert [p.scores for p in first.prompts][0] == one[0:4] + one[8:12]
    assert swapped.prompts[0].scores == one[4:8] + one[0:4] + one[12:16] + one[8:12]
    assert [p.scores for p in both.prompts] != [p.scores for p in swapped.prompts]


def test_one_draw_from_seed_zero_is_the_runs_evaluation_and_the_default(bigram):
    model, data, _ = bigram
    tokenizer = load_tokenizer(model)
    student = load_model(model, dtype=torch.float32).eval()
    examples = encode_rows(read_rows(data), tokenizer, max_prompt_length=64, max_completion_length=64, source=data)
    ctx = EvalContext(student, None, tokenizer, eos_token_ids(student, tokenizer), beta=0.5, temperature=1.0, top_k=0,
                      max_new_tokens=8, batch_size=4, matcher=answer_matcher("countdown"), decode_temperature=1.0,
                      diversity=diversity_measure("countdown"))  # fmt: skip
    metrics, samples = evaluate(ctx, examples, n_samples=2, seed=0)
    report = _eval(bigram)  # the defaults: temperature 1 for countdown, one completion per row from seed 0
    assert (report.temperature, report.sampled.samples_per_prompt, report.sampled.seeds) == (1.0, 1, [0])
    assert metrics[mk.EVAL_EXACT_MATCH] == report.accuracy
    assert metrics[mk.EVAL_GREEDY_EXACT_MATCH] == 0.5
    assert metrics[mk.EVAL_DISTINCT_VALID] == report.sampled.distinct_valid
    assert metrics[mk.EVAL_TRUE_LOG_LIKELIHOOD] == pytest.approx(report.sampled.diversity)
    assert metrics[mk.EVAL_COMPLETION_LENGTH] == 5.0
    assert len(samples) == 2 and all(s["completion"] in ("-3=0", "-1=0") for s in samples)
    ctx.decode_temperature = 0.0  # a greedy run's evaluation: one pass, no greedy key beside it
    greedy_metrics, _ = evaluate(ctx, examples, n_samples=0)
    assert greedy_metrics[mk.EVAL_EXACT_MATCH] == 0.5 and mk.EVAL_GREEDY_EXACT_MATCH not in greedy_metrics
    assert greedy_metrics[mk.EVAL_TRUE_LOG_LIKELIHOOD] == pytest.approx(-LOG3)
    assert all(mk.is_known(key) for key in metrics)


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_the_sampling_temperature_is_the_one_asked_for(bigram, temperature):
    report = _eval(bigram, temperature=temperature, samples_per_prompt=50, seeds=[0, 1])
    scores = report.prompts[0].scores  # S=3 m=3: right exactly when the model wrote "-3=0"
    assert len(scores) == 200
    share, sd = sum(scores) / 200, math.sqrt(p_three(temperature) * (1 - p_three(temperature)) / 200)
    assert abs(share - p_three(temperature)) < 4 * sd, (share, p_three(temperature))  # 0.69 at T 1, 0.96 at T 0.25


def test_distinct_valid_counts_each_correct_text_once(bigram):
    """Graded by exact match, one prompt with references "-3=0" and "-1=0": both samples can be right."""
    _, _, root = bigram
    data = countdown_rows(root / "two.jsonl", [("S=3 m=3", "-3=0"), ("S=3 m=3", "-1=0"), ("S=3 m=3", " -3=0 ")])
    report = evaluate_model(bigram[0], str(data), teacher=None, metric="exact_match", max_new_tokens=8, n_samples=0,
                            temperature=1.0, samples_per_prompt=8, seeds=[0, 1, 2])  # fmt: skip
    (prompt,) = report.prompts
    assert prompt.rows == 3 and len(prompt.scores) == 72
    three, one, padded = prompt.scores[:24], prompt.scores[24:48], prompt.scores[48:]
    assert any(three) and any(one) and any(padded)  # each row its own draws; rows 1 and 3 take "-3=0"
    assert prompt.distinct_valid == 2  # "-3=0" (rows 1 and 3, whitespace-normalised) and "-1=0"
    assert prompt.greedy == pytest.approx(2 / 3) and report.greedy.distinct_valid == 1
    assert report.diversity is None and prompt.diversity is None  # no diversity measure for exact_match


def test_a_report_round_trips_through_json(bigram):
    report = _eval(bigram, temperature=1.0, samples_per_prompt=2, seeds=[3])
    data = json.loads(json.dumps(report.to_json()))
    assert ModelReport.from_json(data) == report
    assert set(data["sampled"]) == {"temperature", "samples_per_prompt", "seeds", "accuracy", "stderr",
                                    "completion_length", "distinct_valid", "diversity"}  # fmt: skip
    assert set(data["prompts"][0]) == {"prompt", "rows", "scores", "greedy", "distinct_valid", "diversity",
                                       "reference_diversity"}  # fmt: skip


def test_bad_sampling_arguments_name_the_option(bigram):
    for kwargs, named in (({"seeds": []}, "--seeds"), ({"seeds": [1, 1]}, "--seeds"),
                          ({"samples_per_prompt": 0}, "--samples-per-prompt"), ({"temperature": -1.0}, "--temperature")):  # fmt: skip
        with pytest.raises(EvalError, match=named):
            _eval(bigram, **kwargs)


def test_clustered_stderr_against_the_prompt_means():
    # equal cluster sizes: the standard deviation of the prompt means over sqrt(P)
    clusters = [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]]
    means = [0.5, 1.0, 0.25]
    mean = sum(means) / 3
    sd = math.sqrt(sum((m - mean) ** 2 for m in means) / 2)
    assert clustered_stderr(clusters) == pytest.approx(sd / math.sqrt(3))
    assert clustered_stderr([[1, 0]]) is None and clustered_stderr([[1], []]) is None
