"""The distillation training loop, readable top to bottom (the nanoGPT shape).

    distill run examples/gkd_on_policy.yaml         # the CLI
    core_distill.train.run(spec, output_dir=...)    # the worker

    state = setup(spec, ...)                  # models, data, optimizer, resume, the step-0 evaluation
    for step in range(state.start + 1, spec.max_steps + 1):
        state.metrics = train_step(state, step)
        if after_step(state, step):           # log, evaluate, stop, checkpoint
            break
    finish(state, stopped)                    # the final model

One optimizer step (`train_step`):
  1. draw a data source for each of the `grad_accum` micro-batches (seeded by step): the student
     samples the completion with probability lmbda (on-policy), else the dataset's completion is
     used, or the teacher's own sample with seq_kd;
  2. sample every on-policy completion of the step in one batched call (the generation buffer),
     and every seq_kd completion in another;
  3. for each micro-batch (`micro_batch_loss`): the objective's row of OBJECTIVES gives the weights
     (divergence weight and beta, a per-token SFT weight, per-token estimators such as MiniLLM's
     advantage); teacher hidden states (no grad) and student hidden states at the completion
     positions, then the fused chunked loss (no (B, L, V) logits are ever built);
  4. clip and step; the step's metrics.
Losses are normalised by the number of completion tokens in the whole step, so gradient
accumulation gives the same gradient as one big batch. Host syncs are marked where they happen
("host sync"); the loss terms accumulate on the device and are read once per step.

Under torchrun (`gpus` > 1, see core_distill/distributed.py) the same loop runs in every process:
each micro-batch of `batch_size` rows is drawn from (seed, step) as in one process and each rank
takes its `batch_size / gpus` rows; the token count that normalises the loss is summed over ranks, so
the gradient is that of the one-process run (up to float summation order).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from core_distill import distributed as dist
from core_distill import metric_keys as mk
from core_distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_sharded_checkpoint
from core_distill.data.batches import Example, batch_indices, check_examples, encode_rows, make_batch
from core_distill.data.sources import DataError, FieldDataError, read_rows, request_for
from core_distill.data.vocab import id_count
from core_distill.eval_watch import EvalDropWatch
from core_distill.evaluation import EvalContext, answer_matcher, diversity_measure, evaluate
from core_distill.generation.sampling import HFSampler, Sampler, make_student_sampler
from core_distill.generation.stops import eos_token_ids
from core_distill.losses import (
    STAT_KEYS,
    DenseTeacher,
    LossTerms,
    SparseTeacher,
    fused_distill_loss,
    reverse_kl_advantages,
    sampled_token_logprobs,
)
from core_distill.models import (
    add_lora,
    causal_lm,
    completion_hidden,
    compute_dtype,
    head_of,
    load_model,
    load_tokenizer,
)
from core_distill.reporting import NullReporter, Reporter
from core_distill.spec import DistillSpec, SpecError
from core_distill.teachers.factory import build_teacher, vocabulary_note

STUDENT, TEACHER, DATASET = "student", "teacher", "dataset"


@dataclass
class RunResult:
    step: int  # last completed optimizer step
    model_dir: Path | None  # final model (None when stopped early)
    stopped: bool  # the reporter asked to stop
    metrics: dict[str, float] = field(default_factory=dict)  # the last step's
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation's (this attempt's)


@dataclass
class TrainState:
    """Everything `setup` builds and the loop reads; `step` and `metrics` move as it runs."""

    spec: DistillSpec
    output_dir: Path
    reporter: Reporter
    accelerator: Accelerator
    dtype: torch.dtype
    tokenizer: object
    train_examples: list[Example]
    eval_examples: list[Example]
    student: nn.Module  # as prepared by Accelerate (DDP-wrapped) or sharded in place (FSDP)
    teacher: object | None  # a core_distill.teachers Teacher; None for SFT without seq_kd
    teacher_module: nn.Module | None  # the teacher's own module when it is sharded with the student
    optimizer: torch.optim.Optimizer
    scheduler: object
    student_sampler: Sampler
    eos_ids: set[int]
    eval_ctx: EvalContext
    watch: EvalDropWatch
    bar: object  # tqdm
    printed: bool  # progress goes to the terminal (the CLI, rank 0)
    start: int  # the checkpoint's step (0 for a fresh run)
    step: int = 0  # the last completed step
    metrics: dict[str, float] = field(default_factory=dict)  # the last step's
    baseline: dict[str, float] = field(default_factory=dict)  # the step-0 evaluation (the model card's "before")
    last_eval: dict[str, float] = field(default_factory=dict)  # this attempt's last evaluation

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world(self) -> int:
        return dist.world_size()

    @property
    def fsdp(self) -> bool:
        return self.spec.sharding == "fsdp"


def run(
    spec: DistillSpec,
    *,
    output_dir: str | Path,
    reporter: Reporter | None = None,
    resume: bool = True,
    progress: bool = False,
) -> RunResult:
    """Train `spec.student` toward the teacher; checkpoints and the final model go to output_dir.

    Under torchrun every rank calls this with the same arguments; only rank 0's reporter is used
    (the others get a NullReporter), and rank 0's stop request stops every rank at the same step.
    """
    state = setup(spec, Path(output_dir), reporter, resume=resume, progress=progress)
    stopped = False
    for step in range(state.start + 1, spec.max_steps + 1):
        state.metrics = train_step(state, step)
        state.step = step
        stopped = after_step(state, step)
        if stopped:
            break
    return finish(state, stopped)


# --- setup: precision, models, data, optimizer, resume ----------------------------------------------
def setup(
    spec: DistillSpec, output_dir: Path, reporter: Reporter | None, *, resume: bool, progress: bool
) -> TrainState:
    """Load and place everything, resume from the last checkpoint and evaluate the baseline (step 0)."""
    from accelerate.utils import DataLoaderConfiguration

    spec.preflight()
    cpu = not torch.cuda.is_available()
    check_world(spec)
    dist.init(cpu)
    output_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        (output_dir / "spec.yaml").write_text(spec.to_yaml())
    reporter = (reporter or NullReporter()) if dist.is_main() else NullReporter()
    fsdp = spec.sharding == "fsdp"

    dtype = compute_dtype(spec.dtype, torch.device("cpu" if cpu else "cuda"))
    # fp32 master weights; bf16/fp16 compute through autocast (FSDP: its mixed-precision policy)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    # split_batches: the scheduler steps once per optimizer step whatever the number of processes
    accelerator = Accelerator(mixed_precision="no" if fsdp else precision, cpu=cpu,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))  # fmt: skip
    device = accelerator.device
    tokenizer = load_tokenizer(spec.student, spec.trust_remote_code)
    train_examples, eval_examples = load_examples(spec, tokenizer)
    student = load_student(spec, dtype)
    if spec.lora:
        torch.manual_seed(spec.seed)  # the adapters' initial weights: the same in every process and every run
        student = add_lora(student, spec)
    if spec.gradient_checkpointing:  # non-reentrant: the variant that works under FSDP and with frozen inputs
        causal_lm(student).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.to(device).train()
    teacher = None
    if spec.objective != "sft" or spec.seq_kd:  # heads of two sizes are cut to the tokenizer's ids (data/vocab.py)
        teacher = build_teacher(spec, student, dtype=dtype, device=device, token_ids=id_count(tokenizer))
    printed = progress and dist.is_main()
    announce(run_header(student, teacher), reporter, printed=printed)
    if fsdp:  # sharded in place before the optimizer sees the parameters; not wrapped again by Accelerate
        dist.shard(student, param_dtype=None if dtype == torch.float32 else dtype)
    optimizer, scheduler = make_optimizer(spec, student)
    if fsdp:
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    else:
        student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    teacher_module = getattr(teacher, "model", None) if spec.teacher_placement == "sharded" else None
    eos_ids = eos_token_ids(student, tokenizer)
    eval_ctx = EvalContext(
        student, teacher, tokenizer, eos_ids, beta=spec.beta, temperature=spec.kd_temperature, top_k=spec.loss_top_k,
        max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size, matcher=answer_matcher(spec.eval_metric),
        privileged_teacher=spec.opsd != "off", decode_temperature=spec.eval_temperature,
        diversity=diversity_measure(spec.eval_metric),
    )  # fmt: skip

    start = 0
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, accelerator.unwrap_model(student), optimizer, scheduler, wrapped=student)
    reporter.resumed(start)
    watch = EvalDropWatch(len(eval_examples), spec.learning_rate, spec.batch_size * spec.grad_accum, spec.max_steps)
    state = TrainState(
        spec, output_dir, reporter, accelerator, dtype, tokenizer, train_examples, eval_examples, student, teacher,
        teacher_module, optimizer, scheduler, make_student_sampler(spec, student), eos_ids, eval_ctx, watch,
        bar=None, printed=printed, start=start, step=start,
    )  # fmt: skip
    if eval_examples and start == 0:  # the baseline: the student before its first update
        watch.check(0, evaluate_now(state, 0))
    state.bar = _progress_bar(printed, start, spec.max_steps)
    return state


# --- one optimizer step ------------------------------------------------------------------------------
def train_step(state: TrainState, step: int) -> dict[str, float]:
    """Draw the step's rows and sources, sample the completions, accumulate the micro-batches' gradients,
    clip and step; the step's metrics."""
    spec, student, world = state.spec, state.student, state.world
    torch.manual_seed(spec.seed * 1_000_003 + step)  # sampling depends on (seed, step) only
    t_step = time.perf_counter()
    micro_batches = step_rows(spec, state.train_examples, step)
    sources = draw_sources(spec, step)

    t0 = time.perf_counter()
    # FSDP: every rank samples its own rows, a different number of forwards each: gather the weights once
    sampling = any(src != DATASET for src in sources)
    with dist.full_parameters(student, state.teacher_module) if sampling else nullcontext():
        completions = fill_completions(spec, micro_batches, sources, state.student_sampler, state.teacher,
                                       state.tokenizer, state.eos_ids)  # fmt: skip
    time_generate = time.perf_counter() - t0

    n_tokens, n_generated, cut_prompts, cut_completions = step_counts(micro_batches, sources, completions, state.device)
    sums = StepSums(state.device)
    for k, (examples, source, comps) in enumerate(zip(micro_batches, sources, completions, strict=True)):
        last = k == spec.grad_accum - 1
        with nullcontext() if last or state.fsdp else state.accelerator.no_sync(student):
            loss = micro_batch_loss(spec, student, state.teacher, state.tokenizer, examples, comps, source, n_tokens,
                                    sums)  # fmt: skip
            t0 = time.perf_counter()
            # DDP and FSDP average gradients over ranks; the loss is a share of a sum: scale back
            state.accelerator.backward(loss * world if world > 1 else loss)
            sums.time_update += time.perf_counter() - t0

    # host sync: the gradient norm as a float
    clip = (
        _clip_sharded(student, spec.max_grad_norm)
        if state.fsdp
        else _clip(state.accelerator, student, spec.max_grad_norm)
    )
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)

    step_seconds = time.perf_counter() - t_step
    lengths, ended = completion_stats(completions, state.eos_ids)
    if world > 1:
        lengths, ended = dist.gather_lists(lengths, state.device), dist.gather_lists(ended, state.device)
    metrics = sums.metrics(n_tokens, lengths, ended, sources)
    metrics.update({
        mk.LR: state.scheduler.get_last_lr()[0], mk.GRAD_NORM: clip, mk.PERF_STEP_SECONDS: step_seconds,
        mk.PERF_TOKENS_PER_SEC: n_tokens / step_seconds, mk.TIME_GENERATE: time_generate,
        mk.COUNT_GENERATED_TOKENS: n_generated, mk.COUNT_TEACHER_TOKENS: sums.teacher_tokens,
        mk.DATA_TRUNCATED_PROMPTS: cut_prompts, mk.DATA_TRUNCATED_COMPLETIONS: cut_completions,
    })  # fmt: skip
    return metrics


# --- after a step: log, evaluate, stop, checkpoint ------------------------------------------------------
def after_step(state: TrainState, step: int) -> bool:
    """Report the step, evaluate and checkpoint when due; True when the run stops here."""
    spec, metrics = state.spec, state.metrics
    state.reporter.log(step, metrics)
    state.bar.update(1)
    state.bar.set_postfix(loss=f"{metrics[mk.LOSS]:.4f}", kd=f"{metrics[mk.LOSS_KD]:.4f}")
    due = state.eval_examples and ((spec.eval_every and step % spec.eval_every == 0) or step == spec.max_steps)
    if due and (text := state.watch.check(step, evaluate_now(state, step))) is not None:
        warn(text, state.reporter, printed=state.printed)
    # host sync under torchrun (a collective): rank 0 asks; every rank stops here
    stopped = dist.any_rank(state.reporter.should_stop(), state.device)
    if stopped or step == spec.max_steps or (spec.save_every and step % spec.save_every == 0):
        if state.world > 1:
            save_sharded_checkpoint(state.output_dir, step, state.student, state.optimizer, state.scheduler)
        else:
            save_checkpoint(state.output_dir, step, state.accelerator.unwrap_model(state.student), state.optimizer,
                            state.scheduler)  # fmt: skip
    return stopped


def evaluate_now(state: TrainState, step: int) -> dict[str, float]:
    """Evaluate the student as it is at `step` (0: before training), then back to training mode."""
    scores = _evaluate(state.eval_ctx, state.eval_examples, state.spec, state.reporter, step,
                       models=(state.student, state.teacher_module), progress=state.printed)  # fmt: skip
    state.student.train()
    state.last_eval = scores
    if step == 0:
        state.baseline = scores
    return scores


# --- the end: the final model ------------------------------------------------------------------------
def finish(state: TrainState, stopped: bool) -> RunResult:
    """Save the final model (not when stopped early) and say where the run ended."""
    spec, student, metrics = state.spec, state.student, state.metrics
    state.bar.close()
    last_step = state.step
    if stopped:
        return RunResult(last_step, None, True, metrics, state.last_eval)
    if state.world > 1:
        final = save_final_model_from_ranks(spec, student, state.tokenizer, state.output_dir, state.dtype)
    else:
        final = save_final_model(state.accelerator.unwrap_model(student), state.tokenizer, state.output_dir)
    if dist.is_main():  # final/ is a whole hub repository: the model card and the spec beside the weights
        from core_distill.model_card import write_model_card

        try:
            write_model_card(final, spec, {**metrics, **state.last_eval}, state.baseline, last_step)
        except Exception as exc:  # noqa: BLE001  (the trained model matters more than its card)
            warn(f"model card not written ({type(exc).__name__}: {exc}); the model is in {final}", state.reporter,
                 printed=state.printed)  # fmt: skip
    return RunResult(last_step, final, False, metrics, state.last_eval)


def run_header(student: nn.Module, teacher) -> list[str]:
    """What the run decided while loading that its numbers depend on (e.g. a vocabulary cut), one line each."""
    return [line for line in (vocabulary_note(student, teacher) if teacher is not None else None,) if line]


def announce(header: list[str], reporter: Reporter, *, printed: bool) -> None:
    """The header to the log, to the reporter (a run folder's header.txt, the dashboard's run view) and,
    from the CLI, to the terminal."""
    for line in header:
        logging.getLogger(__name__).info(line)
        if printed:
            print(line, flush=True)
    note = getattr(reporter, "header", None)  # optional in the Reporter protocol
    if header and note is not None:
        note(header)


def warn(text: str, reporter: Reporter, *, printed: bool) -> None:
    """A warning about the run's course to the log, to the reporter (optional `warning` in the Reporter
    protocol: the run's history on the dashboard) and, from the CLI, to the terminal above the bar."""
    logging.getLogger(__name__).warning(text)
    if printed:
        from tqdm.auto import tqdm

        tqdm.write(text)
    note = getattr(reporter, "warning", None)
    if note is not None:
        note(text)


def check_world(spec: DistillSpec) -> None:
    """The processes torchrun started are the ones the spec asks for."""
    world = dist.world_size()
    if world != spec.gpus:
        how = ("start it with `distill run` (which launches itself) or core_distill.distributed.launcher_argv"
               if world == 1 else f"this launcher started {world}")  # fmt: skip
        raise SpecError({"gpus": f"the spec asks for {spec.gpus} processes; {how}"})


def _evaluate(eval_ctx: EvalContext, eval_examples: list[Example], spec: DistillSpec, reporter: Reporter, step: int,
              models: tuple = (), progress: bool = False) -> dict[str, float]:  # fmt: skip
    """Evaluate and report; the eval metrics (empty on ranks other than 0)."""
    # one sampling seed at every step, and for every run of a seed: the eval curve moves only when the
    # model does, and two methods are compared on the same random numbers.
    # Several processes: rank 0 alone evaluates, with the weights gathered (no collective inside)
    eval_metrics: dict[str, float] = {}
    with dist.full_parameters(*models):
        if dist.is_main():
            eval_metrics, samples = evaluate(eval_ctx, eval_examples, spec.eval_completions_logged, seed=spec.seed,
                                             progress=progress, desc=f"eval at step {step}")  # fmt: skip
            reporter.log(step, eval_metrics)
            reporter.log_samples(step, samples)
    dist.barrier()
    return eval_metrics


# --- data sources ------------------------------------------------------------------------------------
def step_rows(spec: DistillSpec, examples: list[Example], step: int) -> list[list[Example]]:
    """This rank's rows of each of the step's `grad_accum` micro-batches, drawn from (seed, step)."""
    size = spec.batch_size
    rows = batch_indices(len(examples), (step - 1) * size * spec.grad_accum, size * spec.grad_accum, spec.seed)
    mine = dist.rank_slice(size)  # this rank's rows of each micro-batch (all of them in one process)
    return [[examples[i] for i in rows[k * size : (k + 1) * size][mine]] for k in range(spec.grad_accum)]


def draw_sources(spec: DistillSpec, step: int) -> list[str]:
    """Per micro-batch: on-policy with probability lmbda. Seeded by (seed, step), so every
    process of a multi-GPU run and every resumed run draws the same coins."""
    rng = random.Random(spec.seed * 1_000_003 + step)
    off_policy = TEACHER if spec.seq_kd else DATASET
    return [STUDENT if rng.random() < spec.lmbda else off_policy for _ in range(spec.grad_accum)]


def fill_completions(
    spec, micro_batches, sources, student_sampler, teacher, tokenizer, eos_ids
) -> list[list[list[int]]]:
    """Completion ids for every row of every micro-batch; generation is batched across the step."""
    completions: list[list[list[int]] | None] = [
        [e.completion_ids for e in mb] if src == DATASET else None
        for mb, src in zip(micro_batches, sources, strict=True)
    ]
    samplers = {STUDENT: student_sampler, TEACHER: HFSampler(teacher.model, spec.token_draw) if teacher else None}
    for source, sampler in samplers.items():
        wanted = [k for k, src in enumerate(sources) if src == source]
        if not wanted:
            continue
        sampler.sync()
        # seq_kd: the teacher samples from its own view of the prompt (OPSD: the privileged one)
        use_teacher_view = source == TEACHER and spec.opsd != "off"
        prompts = [
            (e.teacher_prompt_ids if use_teacher_view else e.prompt_ids) for k in wanted for e in micro_batches[k]
        ]
        sampled = sampler.sample(  # host sync per decoded token inside (the stop check), and the ids' .tolist()
            prompts, pad_id=tokenizer.pad_token_id, eos_ids=eos_ids, max_new_tokens=spec.max_new_tokens,
            temperature=spec.temperature,
        )  # fmt: skip
        per = len(micro_batches[0])  # rows of this rank per micro-batch
        for i, k in enumerate(wanted):
            completions[k] = sampled[i * per : (i + 1) * per]
    return completions  # type: ignore[return-value]


# --- the objective table -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EstimatorInputs:
    """What a per-token weight estimator reads, for the N completion positions of one micro-batch."""

    spec: DistillSpec
    student_logp: torch.Tensor  # (N,) log p_S(y_t) at the loss temperature, detached
    teacher: DenseTeacher | SparseTeacher | None  # the teacher's targets for the same positions
    targets: torch.Tensor  # (N,) the completion tokens
    mask: torch.Tensor  # (B, C) True on completion tokens: N of them, row-major


# (N,) detached weights A_t of the sampled-token term -A_t log p_S(y_t): a policy-gradient advantage
Estimator = Callable[[EstimatorInputs], torch.Tensor]


@dataclass(frozen=True)
class Weights:
    """What an objective asks of one micro-batch's fused loss:

        loss = sum_t kd_weight * JSD_beta(S_t, T_t) - sum_t w_t log p_S(y_t),
        w_t  = sft_weight + the sum of the estimators' A_t

    The estimators' part is reported as loss/pg; the sft_weight part's tokens as loss/sft."""

    kd_weight: float
    beta: float
    sft_weight: float = 0.0
    estimators: tuple[Estimator, ...] = ()
    scores_teacher: bool = True  # the teacher scores the micro-batch (SFT: never)


def reverse_kl_advantage(x: EstimatorInputs) -> torch.Tensor:
    """MiniLLM's per-token advantage of the sampled-token reverse-KL policy gradient, detached."""
    spec, mask = x.spec, x.mask
    if isinstance(x.teacher, SparseTeacher):
        if x.teacher.target_logp is None:
            raise ValueError("objective='minillm' needs the teacher's log-prob of each sampled token")
        teacher_logp = x.teacher.target_logp.float()
    else:
        teacher_logp = sampled_token_logprobs(x.teacher.hidden, x.teacher.head, x.targets, spec.kd_temperature)
    as_grid = lambda values: torch.zeros(mask.shape, device=values.device).masked_scatter(mask, values)  # noqa: E731
    # with the single-step term (the exact reverse KL at every position) the policy gradient carries
    # only the long-term part, the rewards of the tokens after t; at gamma 0 there is none
    advantages = reverse_kl_advantages(as_grid(teacher_logp), as_grid(x.student_logp), mask, spec.gamma,
                                       spec.length_normalization, from_next_token=spec.single_step_decomposition)  # fmt: skip
    return advantages[mask]


def _sft_alpha(spec: DistillSpec, source: str) -> float:
    return spec.sft_alpha if source != STUDENT else 0.0  # SFT only on completions the student did not sample


def _gkd(spec: DistillSpec, source: str) -> Weights:
    return Weights(kd_weight=1.0, beta=spec.beta, sft_weight=_sft_alpha(spec, source))


def _minillm(spec: DistillSpec, source: str) -> Weights:
    # single step = the exact reverse KL (beta 1) at every position; at gamma 0 the long-term term beside it
    # is zero: no estimator, and no extra forward for it
    long_term = spec.rkl_advantage and not (spec.single_step_decomposition and spec.gamma == 0.0)
    return Weights(kd_weight=1.0 if spec.single_step_decomposition else 0.0, beta=1.0,
                   sft_weight=_sft_alpha(spec, source), estimators=(reverse_kl_advantage,) if long_term else ())  # fmt: skip


def _sft(spec: DistillSpec, source: str) -> Weights:
    return Weights(kd_weight=0.0, beta=spec.beta, sft_weight=1.0, scores_teacher=False)


# spec.objective -> the weights of a micro-batch from `source`; a new objective is a new row
OBJECTIVES: dict[str, Callable[[DistillSpec, str], Weights]] = {"gkd": _gkd, "minillm": _minillm, "sft": _sft}


# --- the loss of one micro-batch ---------------------------------------------------------------------
# the float64 sums on the device, in the order StepSums.reduce sends them over ranks
_SUMS = ("loss", "kd", "sft", "pg", *STAT_KEYS)


@dataclass
class StepSums:
    """Sums over the micro-batches of one optimizer step, turned into per-token means at the end.

    The loss terms accumulate on the device in float64 (the same additions as Python floats of the
    float32 values), so a step syncs with the host once, when its metrics are read."""

    device: torch.device
    values: torch.Tensor = field(init=False)  # (len(_SUMS),) float64
    sft_tokens: int = 0
    time_teacher: float = 0.0
    time_update: float = 0.0
    teacher_tokens: int = 0  # prompt + completion tokens the teacher scored (its forward passes' work)

    def __post_init__(self) -> None:
        self.values = torch.zeros(len(_SUMS), dtype=torch.float64, device=self.device)

    def add(self, terms: LossTerms, sft: torch.Tensor | None, pg: torch.Tensor | None) -> None:
        """One micro-batch's terms (float32 scalars; None: not part of this micro-batch)."""
        zero = terms.stats.new_zeros(())
        scalars = torch.stack(
            [terms.loss.detach(), terms.kd.sum(), zero if sft is None else sft, zero if pg is None else pg]
        )
        self.values += torch.cat([scalars, terms.stats]).double()

    def read(self) -> dict[str, float]:
        """Host sync (`.tolist()`): the one of the step's loss terms."""
        return dict(zip(_SUMS, self.values.tolist(), strict=True))

    def reduce(self, sums: dict[str, float], device: torch.device) -> dict[str, float]:
        """Sum the counts over ranks (times stay this rank's: they are wall times of work done in parallel)."""
        order = ["loss", "kd", "sft", "sft_tokens", "pg", "teacher_tokens", *STAT_KEYS]
        values = dict(sums, sft_tokens=self.sft_tokens, teacher_tokens=self.teacher_tokens)
        summed = dict(zip(order, dist.sum_over_ranks([values[k] for k in order], device), strict=True))  # host sync
        self.sft_tokens, self.teacher_tokens = int(summed.pop("sft_tokens")), int(summed.pop("teacher_tokens"))
        return summed

    def metrics(self, n_tokens: int, lengths: list[int], ended: list[bool], sources) -> dict[str, float]:
        sums = self.read()
        if dist.world_size() > 1:
            sums = self.reduce(sums, self.device)
        n = max(n_tokens, 1)
        out = {
            mk.LOSS: sums["loss"],
            mk.LOSS_KD: sums["kd"] / n,
            mk.LOSS_SFT: sums["sft"] / max(self.sft_tokens, 1),
            mk.DIV_FKL: sums["fkl"] / n,
            mk.DIV_RKL: sums["rkl"] / n,
            mk.DIV_JSD: sums["jsd"] / n,
            mk.ENTROPY_STUDENT: sums["entropy_student"] / n,
            mk.ENTROPY_TEACHER: sums["entropy_teacher"] / n,
            mk.TOPK_COVERAGE: sums["coverage"] / n,
            mk.DATA_ON_POLICY: sources.count(STUDENT) / len(sources),
            mk.COMPLETION_LENGTH_MEAN: sum(lengths) / max(len(lengths), 1),
            mk.COMPLETION_EOS_RATE: sum(ended) / max(len(ended), 1),
            mk.TIME_TEACHER: self.time_teacher,
            mk.TIME_UPDATE: self.time_update,
        }
        if sums["pg"]:
            out[mk.LOSS_PG] = sums["pg"] / n
        return out


def step_counts(micro_batches, sources, completions, device) -> tuple[int, int, int, int]:
    """The step's completion tokens (they normalise the loss), sampled tokens, shortened prompts and shortened
    dataset completions, over all ranks."""
    n_tokens = sum(len(c) for mb in completions for c in mb)
    n_generated = sum(len(c) for mb, src in zip(completions, sources, strict=True) if src != DATASET for c in mb)
    counts = (n_tokens, n_generated, *truncated_rows(micro_batches, sources))
    if dist.world_size() > 1:  # host sync (a collective)
        counts = tuple(int(v) for v in dist.sum_over_ranks(list(counts), device))
    return counts  # type: ignore[return-value]


def completion_stats(completions, eos_ids) -> tuple[list[int], list[bool]]:
    """Length of every completion of the step, and whether it ended with EOS."""
    lengths = [len(c) for mb in completions for c in mb]
    ended = [bool(c) and c[-1] in eos_ids for mb in completions for c in mb]
    return lengths, ended


def micro_batch_loss(
    spec, student, teacher, tokenizer, examples: list[Example], completions, source, n_tokens, sums
) -> torch.Tensor:
    """Loss of one micro-batch, already divided by the step's token count; updates `sums`."""
    weights = OBJECTIVES[spec.objective](spec, source)
    device = next(student.parameters()).device
    batch = make_batch([e.prompt_ids for e in examples], completions, tokenizer.pad_token_id).to(device)
    targets = batch.completion_ids[batch.completion_mask]  # (N,); host sync on an accelerator (a mask's count)

    t0 = time.perf_counter()
    teacher_targets = None
    if teacher is not None and weights.scores_teacher:
        teacher_targets = score_teacher(spec, teacher, examples, completions, source, tokenizer.pad_token_id, device)
        sums.teacher_tokens += sum(len(e.teacher_prompt_ids if spec.opsd != "off" else e.prompt_ids) + len(c)
                                   for e, c in zip(examples, completions, strict=True))  # fmt: skip
    sums.time_teacher += time.perf_counter() - t0

    t0 = time.perf_counter()
    hidden = completion_hidden(student, batch)  # (N, H)
    head = head_of(student)
    token_weights = torch.full((targets.shape[0],), weights.sft_weight, device=device)
    pg = None
    if weights.estimators:
        student_logp = sampled_token_logprobs(hidden.detach(), head, targets, spec.kd_temperature)
        inputs = EstimatorInputs(spec, student_logp, teacher_targets, targets, batch.completion_mask)
        for estimate in weights.estimators:
            advantages = estimate(inputs)
            token_weights += advantages
            term = -(advantages * student_logp).sum()
            pg = term if pg is None else pg + term
    terms = fused_distill_loss(
        hidden, head, teacher_targets, targets, beta=weights.beta, temperature=spec.kd_temperature,
        top_k=spec.loss_top_k, kd_weight=weights.kd_weight, token_weights=token_weights,
        normalizer=max(n_tokens, 1), chunk_size=spec.loss_chunk_size,
    )  # fmt: skip
    sums.time_update += time.perf_counter() - t0

    sft = None
    if weights.sft_weight:
        sft = -terms.student_logp.sum()
        sums.sft_tokens += targets.shape[0]
    sums.add(terms, sft, pg)
    return terms.loss


def score_teacher(spec, teacher, examples: list[Example], completions, source, pad: int, device):
    """The teacher's targets for the completion positions of one micro-batch, from its view of the prompt
    (OPSD: the privileged one); dataset completions may come from its cache."""
    prompts = [e.teacher_prompt_ids for e in examples] if spec.opsd != "off" else [e.prompt_ids for e in examples]
    return teacher.score(make_batch(prompts, completions, pad).to(device), cacheable=source == DATASET)


# --- setup helpers ----------------------------------------------------------------------------------
def load_examples(spec: DistillSpec, tokenizer) -> tuple[list[Example], list[Example]]:
    lengths = dict(max_prompt_length=spec.max_prompt_length, max_completion_length=spec.max_completion_length,
                   system_message=spec.system_message, truncation=spec.truncation)  # fmt: skip
    try:
        train = encode_rows(read_rows(request_for(spec, "train_data")), tokenizer, source=spec.train_data,
                            assistant_turns=spec.assistant_turns, **lengths)  # fmt: skip
        check_examples(
            train, field="train_data", needs_completions=spec.lmbda < 1.0 and not spec.seq_kd,
            needs_teacher_prompt=spec.opsd != "off",
        )  # fmt: skip
        evals = []
        if spec.eval_data:
            rows = read_rows(request_for(spec, "eval_data"))[: spec.eval_examples]
            evals = encode_rows(rows, tokenizer, source=spec.eval_data, **lengths)
    except FieldDataError as exc:
        raise SpecError({exc.field: str(exc).removeprefix(f"{exc.field}: ")}) from None
    except DataError as exc:
        field_name = str(exc).split(":", 1)[0]
        known = field_name if field_name in ("train_data", "eval_data") else "train_data"
        raise SpecError({known: str(exc)}) from None
    return train, evals


def truncated_rows(micro_batches: list[list[Example]], sources: list[str]) -> tuple[int, int]:
    """This step's rows (of this rank) whose prompt was shortened, and those whose dataset completion was used
    shortened (a sampled completion replaces the dataset's)."""
    prompts = sum(e.prompt_cut for mb in micro_batches for e in mb)
    used = [mb for mb, src in zip(micro_batches, sources, strict=True) if src == DATASET]
    completions = sum(e.completion_cut for mb in used for e in mb)
    return prompts, completions


def load_student(spec: DistillSpec, dtype: torch.dtype) -> nn.Module:
    """The student in fp32 master weights (LoRA: its frozen base in the compute dtype)."""
    dtype = dtype if spec.lora else torch.float32
    return load_model(spec.student, dtype=dtype, trust_remote_code=spec.trust_remote_code,
                      attn_implementation=spec.attn_implementation)  # fmt: skip


def make_optimizer(spec: DistillSpec, model: nn.Module):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel updates all parameters in one pass (CPU and CUDA): ~4x faster than the per-tensor loop
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay, fused=True)
    scheduler = get_scheduler(
        spec.lr_schedule, optimizer, num_warmup_steps=spec.warmup_steps, num_training_steps=spec.max_steps
    )
    return optimizer, scheduler


def save_final_model(student: nn.Module, tokenizer, output_dir: Path) -> Path:
    """A plain `from_pretrained`-loadable model (LoRA adapters merged into the weights)."""
    final = output_dir / "final"
    model = student
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    causal_lm(model).save_pretrained(final)
    tokenizer.save_pretrained(final)
    return final


def save_final_model_from_ranks(spec: DistillSpec, student: nn.Module, tokenizer, output_dir: Path, dtype) -> Path:
    """Several processes: gather the full weights on rank 0, load them into a fresh copy of the student
    (so the saved class and config are the plain transformers ones, not FSDP's) and save that."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_main():
        # the dtype the one-process path trains in: fp32 master weights, LoRA's frozen base in compute dtype
        model = load_student(spec, dtype)
        if spec.lora:
            model = add_lora(model, spec)
        model.load_state_dict(full)
        save_final_model(model, tokenizer, output_dir)
    dist.barrier()
    return output_dir / "final"


def _clip_sharded(model: nn.Module, max_norm: float) -> float:
    """FSDP2: the gradients are DTensor shards; their norm is reduced over ranks before clipping."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def _clip(accelerator, model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params])) if params else 0.0


def _progress_bar(enabled: bool, start: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc="distill", unit="step", dynamic_ncols=True)
