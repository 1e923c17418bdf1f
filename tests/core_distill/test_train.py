"""The training loop on tiny local models: data sources, OPSD, MiniLLM, resume, the final model."""

from __future__ import annotations

import json

import pytest
import torch

from core_distill.data.batches import encode_rows, make_batch
from core_distill.data.sources import read_rows
from core_distill.evaluation import EvalContext, evaluate
from core_distill.generation.sampling import HFSampler, sample_completions
from core_distill.generation.stops import eos_token_ids
from core_distill.models import load_model, load_tokenizer
from core_distill.reporting import JsonlReporter, NullReporter
from core_distill.teachers.factory import build_teacher
from core_distill.train import DATASET, STUDENT, TEACHER, draw_sources, fill_completions, run


def metrics_of(output_dir):
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line["metrics"]]


def test_lmbda_zero_and_one_select_dataset_and_student(tiny_workspace):
    assert draw_sources(tiny_workspace.spec(lmbda=0.0, grad_accum=8), 1) == [DATASET] * 8
    assert draw_sources(tiny_workspace.spec(lmbda=1.0, grad_accum=8), 1) == [STUDENT] * 8
    assert draw_sources(tiny_workspace.spec(lmbda=0.0, seq_kd=True, grad_accum=8), 1) == [TEACHER] * 8
    mixed = [s for step in range(1, 51) for s in draw_sources(tiny_workspace.spec(lmbda=0.5, grad_accum=4), step)]
    assert 0.35 < mixed.count(STUDENT) / len(mixed) < 0.65


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_a_run_uses_the_source_lmbda_selects(tiny_workspace, tmp_path, lmbda):
    run(tiny_workspace.spec(lmbda=lmbda), output_dir=tmp_path, reporter=JsonlReporter(tmp_path))
    assert [m["metrics"]["data/on_policy"] for m in metrics_of(tmp_path)] == [lmbda] * 3


def _setup(tiny_workspace, **overrides):
    spec = tiny_workspace.spec(**overrides)
    tokenizer = load_tokenizer(spec.student)
    student = load_model(spec.student, dtype=torch.float32)
    examples = encode_rows(read_rows(spec.train_data), tokenizer, max_prompt_length=64, max_completion_length=64, source="t")
    return spec, tokenizer, student, examples


def test_seq_kd_completions_are_sampled_by_the_teacher(tiny_workspace):
    spec, tokenizer, student, examples = _setup(tiny_workspace, lmbda=0.0, seq_kd=True, grad_accum=1)
    teacher = build_teacher(spec, student, dtype=torch.float32, device=torch.device("cpu"))
    eos = eos_token_ids(student, tokenizer)
    mb = [examples[:2]]
    torch.manual_seed(5)
    got = fill_completions(spec, mb, [TEACHER], HFSampler(student), teacher, tokenizer, eos)[0]
    torch.manual_seed(5)
    by_teacher = sample_completions(teacher.model, [e.prompt_ids for e in mb[0]], pad_id=tokenizer.pad_token_id,
                                    eos_ids=eos, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature)  # fmt: skip
    torch.manual_seed(5)
    by_student = sample_completions(student, [e.prompt_ids for e in mb[0]], pad_id=tokenizer.pad_token_id,
                                    eos_ids=eos, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature)  # fmt: skip
    assert got == by_teacher != by_student
    assert got != [e.completion_ids for e in mb[0]]


def _kd_of(teacher, student, tokenizer, prompts, teacher_prompts, completions):
    from core_distill.losses import fused_distill_loss
    from core_distill.models import completion_hidden, head_of

    batch = make_batch(prompts, completions, tokenizer.pad_token_id)
    with torch.no_grad():
        terms = fused_distill_loss(
            completion_hidden(student, batch), head_of(student),
            teacher.score(make_batch(teacher_prompts, completions, tokenizer.pad_token_id)),
            batch.completion_ids[batch.completion_mask], beta=0.5,
        )  # fmt: skip
    return terms.kd_per_token.sum().item()


def test_opsd_dynamic_teacher_sees_the_teacher_prompt(tiny_workspace):
    spec, tokenizer, student, examples = _setup(tiny_workspace, opsd="dynamic", teacher="")
    teacher = build_teacher(spec, student, dtype=torch.float32, device=torch.device("cpu"))
    rows = examples[:3]
    completions = [e.completion_ids for e in rows]
    plain = [e.prompt_ids for e in rows]
    privileged = [e.teacher_prompt_ids for e in rows]
    assert privileged != plain
    # the same network with the same prompt is its own perfect teacher; the privileged prompt is not
    assert _kd_of(teacher, student, tokenizer, plain, plain, completions) == pytest.approx(0.0, abs=1e-6)
    assert _kd_of(teacher, student, tokenizer, plain, privileged, completions) > 1e-4


@pytest.mark.parametrize("privileged", [False, True])
def test_evaluation_shows_the_teacher_prompt_only_under_opsd(tiny_workspace, privileged):
    # the student as its own teacher: zero divergence unless eval shows it the privileged prompt
    spec, tokenizer, student, examples = _setup(tiny_workspace, opsd="dynamic", teacher="")
    teacher = build_teacher(spec, student, dtype=torch.float32, device=torch.device("cpu"))
    ctx = EvalContext(student, teacher, tokenizer, eos_token_ids(student, tokenizer), beta=0.5, temperature=1.0,
                      top_k=0, max_new_tokens=4, batch_size=4, privileged_teacher=privileged)  # fmt: skip
    metrics, samples = evaluate(ctx, examples[:4], n_samples=2)
    if privileged:
        assert metrics["eval/loss/kd"] > 1e-4 and max(max(s["token_div"]) for s in samples) > 1e-4
    else:
        assert metrics["eval/loss/kd"] == pytest.approx(0.0, abs=1e-6)
        assert all(abs(v) < 1e-5 for s in samples for v in s["token_div"])


def test_opsd_fixed_teacher_keeps_the_initial_weights(tiny_workspace):
    spec, tokenizer, student, examples = _setup(tiny_workspace, opsd="fixed", teacher="")
    fixed = build_teacher(spec, student, dtype=torch.float32, device=torch.device("cpu"))
    dynamic = build_teacher(spec.with_overrides({"opsd": "dynamic"}), student, dtype=torch.float32, device=torch.device("cpu"))
    batch = make_batch([e.prompt_ids for e in examples[:2]], [e.completion_ids for e in examples[:2]], tokenizer.pad_token_id)
    before = fixed.score(batch).hidden.clone()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05)
    torch.testing.assert_close(fixed.score(batch).hidden, before)
    assert not torch.allclose(dynamic.score(batch).hidden, before)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(objective="minillm", lmbda=1.0, gamma=0.5, temperature=1.0),
        dict(objective="minillm", lmbda=1.0, single_step_decomposition=False, temperature=1.0),
        dict(opsd="dynamic", teacher="", lmbda=1.0),
        dict(opsd="fixed", teacher="", lora=True),
        dict(objective="sft", lmbda=0.0, teacher=""),
        dict(loss_top_k=5, beta=1.0, sft_alpha=0.5),
    ],
)
def test_every_method_trains_and_reports_finite_metrics(tiny_workspace, tmp_path, overrides):
    result = run(tiny_workspace.spec(**overrides), output_dir=tmp_path, reporter=JsonlReporter(tmp_path))
    assert result.step == 3 and not result.stopped
    for line in metrics_of(tmp_path):
        assert all(v == v and abs(v) != float("inf") for v in line["metrics"].values())
    if overrides.get("objective") == "minillm" and overrides.get("single_step_decomposition") is False:
        assert "loss/pg" in result.metrics and result.metrics["loss/kd"] > 0  # kd is logged, not trained on


def test_minillm_at_gamma_zero_follows_the_exact_reverse_kl_gradient_once(tiny_workspace, tmp_path):
    """With the single-step decomposition and gamma 0 the long-term term is empty: a MiniLLM step is a
    reverse-KL on-policy GKD step (before the fix the sampled log-ratio was added on top: twice the gradient)."""
    common = dict(lmbda=1.0, temperature=1.0, max_steps=2, grad_accum=1)
    minillm = run(tiny_workspace.spec(objective="minillm", gamma=0.0, **common), output_dir=tmp_path / "minillm")
    reverse_kl = run(tiny_workspace.spec(objective="gkd", beta=1.0, **common), output_dir=tmp_path / "rkl")
    for a, b in zip(load_model(str(minillm.model_dir), dtype=torch.float32).parameters(),
                    load_model(str(reverse_kl.model_dir), dtype=torch.float32).parameters(),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)
    assert minillm.metrics["grad_norm"] == pytest.approx(reverse_kl.metrics["grad_norm"], rel=1e-5)


def test_minillm_refuses_samples_from_another_temperature(tiny_workspace):
    with pytest.raises(ValueError, match="temperature"):
        tiny_workspace.spec(objective="minillm", lmbda=1.0, temperature=0.9)


def test_training_moves_the_student_toward_the_teacher(tiny_workspace, tmp_path):
    spec = tiny_workspace.spec(lmbda=0.0, beta=0.0, max_steps=25, learning_rate=3e-3, grad_accum=1)
    run(spec, output_dir=tmp_path, reporter=JsonlReporter(tmp_path))
    fkl = [m["metrics"]["div/fkl"] for m in metrics_of(tmp_path)]
    assert sum(fkl[-5:]) / 5 < 0.5 * sum(fkl[:5]) / 5


class StopAfter(NullReporter):
    def __init__(self, step):
        self.step, self.last = step, 0

    def log(self, step, metrics):
        self.last = step

    def should_stop(self):
        return self.last >= self.step


class CrashAt(NullReporter):
    def __init__(self, step):
        self.step = step

    def log(self, step, metrics):
        if step == self.step:
            raise RuntimeError("simulated kill")


def test_resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run(tiny_workspace, tmp_path):
    spec = tiny_workspace.spec(lmbda=0.5, max_steps=4, save_every=2, sft_alpha=0.3)
    straight = run(spec, output_dir=tmp_path / "a")
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(spec, output_dir=tmp_path / "b", reporter=CrashAt(3))  # dies after the step-2 checkpoint
    reporter = JsonlReporter(tmp_path / "b")
    resumed = run(spec, output_dir=tmp_path / "b", reporter=reporter)
    assert [m["step"] for m in metrics_of(tmp_path / "b")] == [3, 4]
    a = load_model(str(straight.model_dir), dtype=torch.float32).state_dict()
    b = load_model(str(resumed.model_dir), dtype=torch.float32).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_stop_request_checkpoints_and_resume_finishes(tiny_workspace, tmp_path):
    spec = tiny_workspace.spec(max_steps=4, save_every=0)
    result = run(spec, output_dir=tmp_path, reporter=StopAfter(2))
    assert result.stopped and result.step == 2 and result.model_dir is None
    assert (tmp_path / "checkpoints" / "step-00000002" / "state.json").exists()
    finished = run(spec, output_dir=tmp_path)
    assert finished.step == 4 and not finished.stopped


def test_final_model_loads_with_from_pretrained_and_lora_is_merged(tiny_workspace, tmp_path):
    from transformers import AutoModelForCausalLM

    result = run(tiny_workspace.spec(lora=True, learning_rate=1e-2), output_dir=tmp_path)
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    original = AutoModelForCausalLM.from_pretrained(tiny_workspace.student)
    assert not any("lora" in name for name in model.state_dict())
    changed = [n for n, p in model.state_dict().items() if not torch.equal(p, original.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # adapters merged into linear layers only


def test_evaluation_logs_accuracy_divergences_and_token_heat_map(tiny_workspace, tmp_path):
    run(tiny_workspace.spec(eval_every=2, max_steps=2), output_dir=tmp_path, reporter=JsonlReporter(tmp_path))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [x["metrics"] for x in lines if "eval/exact_match" in x["metrics"]]
    assert [x["step"] for x in lines if "eval/exact_match" in x["metrics"]] == [0, 2]  # a baseline before step 1
    assert all(0.0 <= e["eval/exact_match"] <= 1.0 and e["eval/div/fkl"] > 0 for e in evals)
    sample = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])["samples"][0]
    assert len(sample["tokens"]) == len(sample["token_div"]) > 0
    assert {"prompt", "completion", "reference", "correct"} <= set(sample)
