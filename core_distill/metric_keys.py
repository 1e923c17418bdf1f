"""Every metric key the engine logs, named once: the trainer and the evaluation write these, the CLI,
the dashboard and the comparisons read them. Keys are snake_case with a slash prefix per group
(`loss/`, `div/`, ...), which is how charts group them. Evaluation logs a training key under `eval/`
(`eval/div/fkl`): `eval_key(DIV_FKL)`.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- training, once per optimizer step
LOSS = "loss"  # what the optimizer minimised
LOSS_KD = "loss/kd"  # the distillation term (per token)
LOSS_SFT = "loss/sft"  # the supervised term on reference completions
LOSS_PG = "loss/pg"  # the policy-gradient term (MiniLLM)
DIV_FKL = "div/fkl"  # forward KL(teacher || student), per token
DIV_RKL = "div/rkl"  # reverse KL(student || teacher), per token
DIV_JSD = "div/jsd"  # generalised Jensen-Shannon at the spec's beta, per token
ENTROPY_STUDENT = "entropy/student"
ENTROPY_TEACHER = "entropy/teacher"
TOPK_COVERAGE = "topk/coverage"  # teacher probability mass inside the kept top-k
LR = "lr"
GRAD_NORM = "grad_norm"
PERF_STEP_SECONDS = "perf/step_seconds"
PERF_TOKENS_PER_SEC = "perf/tokens_per_sec"
TIME_GENERATE = "time/generate"  # seconds of the step spent sampling completions
TIME_TEACHER = "time/teacher"  # ... scoring them with the teacher
TIME_UPDATE = "time/update"  # ... in the student's forward, backward and optimizer step
DATA_ON_POLICY = "data/on_policy"  # share of the step's completions the student sampled
DATA_TRUNCATED_PROMPTS = "data/truncated_prompts"  # rows of the step whose prompt was over max_prompt_length
DATA_TRUNCATED_COMPLETIONS = "data/truncated_completions"  # ... whose dataset completion was over max_completion_length
COMPLETION_LENGTH_MEAN = "completion/length_mean"  # tokens per training completion
COMPLETION_EOS_RATE = "completion/eos_rate"  # share of completions that ended with a stop token (EOS or end of turn)
COUNT_GENERATED_TOKENS = "count/generated_tokens"  # tokens sampled this step
COUNT_TEACHER_TOKENS = "count/teacher_tokens"  # tokens the teacher scored this step

# --- evaluation, every eval_every steps
EVAL_PREFIX = "eval/"
EVAL_EXACT_MATCH = "eval/exact_match"  # share of eval prompts answered correctly
EVAL_COMPLETION_LENGTH = "eval/completion_length"  # mean tokens per eval completion
EVAL_GREEDY_EXACT_MATCH = "eval/greedy_exact_match"  # ... of greedy completions (only when eval_temperature > 0)
EVAL_DISTINCT_VALID = "eval/distinct_valid"  # distinct correct completions per eval prompt
EVAL_TRUE_LOG_LIKELIHOOD = "eval/true_log_likelihood"  # log P(correct completion) under the task's own process


def eval_key(key: str) -> str:
    """The evaluation's name for a training key: div/fkl -> eval/div/fkl."""
    return EVAL_PREFIX + key


EVAL_DIV_FKL = eval_key(DIV_FKL)
EVAL_DIV_RKL = eval_key(DIV_RKL)
EVAL_DIV_JSD = eval_key(DIV_JSD)

ALL = frozenset(v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str) and k != "EVAL_PREFIX")


def is_known(key: str) -> bool:
    """A key of this catalogue, or the evaluation's version of one."""
    return key in ALL or (key.startswith(EVAL_PREFIX) and key.removeprefix(EVAL_PREFIX) in ALL)


# --- what views show by default
# a run's latest results in one line (runs table, GET /api/runs): accuracy, divergences, loss, speed
SUMMARY = (EVAL_EXACT_MATCH, DIV_FKL, DIV_RKL, LOSS, PERF_TOKENS_PER_SEC)
FINAL = (LOSS, LOSS_KD, DIV_FKL, DIV_RKL, DIV_JSD, EVAL_EXACT_MATCH, PERF_TOKENS_PER_SEC)  # a finished run
COMPARED = (LOSS, DIV_FKL, DIV_RKL, EVAL_EXACT_MATCH)  # curves overlaid when comparing runs
PRINTED = (LOSS, LOSS_KD, DIV_FKL, DIV_RKL, EVAL_EXACT_MATCH, EVAL_DIV_FKL, PERF_TOKENS_PER_SEC)  # `distill run`


# --- how charts show them: one family = one chart, one y unit (accuracy never shares an axis with KL)
@dataclass(frozen=True)
class Family:
    name: str  # stable id (CSS class, tests)
    title: str  # what the chart shows
    unit: str  # the y axis label: quantity and unit
    keys: tuple[str, ...]
    percent: bool = False  # a share in [0, 1], drawn as %


FAMILIES = (
    Family("loss", "Training loss", "loss (nats/token)", (LOSS, LOSS_KD, LOSS_SFT, LOSS_PG)),
    Family(
        "divergence",
        "Divergence to the teacher (training batches)",
        "divergence (nats/token)",
        (DIV_FKL, DIV_RKL, DIV_JSD),
    ),
    Family(
        "eval_accuracy",
        "Eval accuracy (exact match)",
        "accuracy (%)",
        (EVAL_EXACT_MATCH, EVAL_GREEDY_EXACT_MATCH),
        percent=True,
    ),
    Family(
        "eval_distinct_valid",
        "Distinct correct completions per eval prompt",
        "completions per prompt",
        (EVAL_DISTINCT_VALID,),
    ),
    Family(
        "eval_true_log_likelihood",
        "Log-likelihood of correct eval completions under the task's generating process",
        "log-likelihood (nats/completion)",
        (EVAL_TRUE_LOG_LIKELIHOOD,),
    ),
    Family(
        "eval_divergence",
        "Eval divergence to the teacher (reference completions)",
        "divergence (nats/token)",
        (EVAL_DIV_FKL, EVAL_DIV_RKL, EVAL_DIV_JSD),
    ),
    Family(
        "entropy", "Entropy of the next-token distribution", "entropy (nats/token)", (ENTROPY_STUDENT, ENTROPY_TEACHER)
    ),
    Family("topk", "Teacher mass inside the kept top-k", "probability mass (%)", (TOPK_COVERAGE,), percent=True),
    Family("lr", "Learning rate", "learning rate", (LR,)),
    Family("grad_norm", "Gradient norm (before clipping)", "L2 norm", (GRAD_NORM,)),
    Family("throughput", "Training throughput", "tokens/s", (PERF_TOKENS_PER_SEC,)),
    Family(
        "time",
        "Step time: total and its split",
        "seconds",
        (PERF_STEP_SECONDS, TIME_GENERATE, TIME_TEACHER, TIME_UPDATE),
    ),
    Family("completion_length", "Completion length", "tokens", (COMPLETION_LENGTH_MEAN, EVAL_COMPLETION_LENGTH)),
    Family(
        "completion_shares",
        "On-policy share and EOS rate",
        "share of completions (%)",
        (DATA_ON_POLICY, COMPLETION_EOS_RATE),
        percent=True,
    ),
    Family("tokens", "Tokens per step", "tokens", (COUNT_GENERATED_TOKENS, COUNT_TEACHER_TOKENS)),
    Family(
        "truncated",
        "Rows shortened to the length limits (truncation)",
        "rows per step",
        (DATA_TRUNCATED_PROMPTS, DATA_TRUNCATED_COMPLETIONS),
    ),
)


def _eval_families() -> tuple[Family, ...]:
    """The evaluation's versions of training keys (eval/loss/kd, eval/entropy/student, ...) that no family
    names: one chart per training family, same unit."""
    named = {key for family in FAMILIES for key in family.keys}
    out = []
    for family in FAMILIES:
        keys = tuple(eval_key(k) for k in family.keys if not k.startswith(EVAL_PREFIX) and eval_key(k) not in named)
        if keys:
            out.append(Family("eval_" + family.name, f"{family.title}, on the eval rows", family.unit, keys, family.percent))
    return tuple(out)


FAMILIES = FAMILIES + _eval_families()


def family_of(key: str) -> Family:
    """The chart a key belongs to; a key outside the catalogue gets a chart of its own."""
    for family in FAMILIES:
        if key in family.keys:
            return family
    return Family("other:" + key, key, key, (key,))


# --- the unit a key is shown in, in tables and charts alike: shares (accuracy, coverage, rates: the
# percent families) as %, the rest as logged. The API and the files keep the logged value (a share in [0, 1]).
def is_percent(key: str) -> bool:
    return family_of(key).percent


def display_scale(key: str) -> float:
    """What a logged value is multiplied by to be shown: 100 for a share, else 1."""
    return 100.0 if is_percent(key) else 1.0


def display_label(key: str) -> str:
    """A table column's name for `key`: 'eval/exact_match (%)', 'loss'."""
    return f"{key} (%)" if is_percent(key) else key


def display_value(key: str, value: float | None, digits: int = 4) -> float | None:
    """`value` in the unit `key` is shown in, rounded to `digits` significant decimals of the logged value
    (0.6123 -> 61.23 %)."""
    if value is None:
        return None
    scale = display_scale(key)
    return round(value * scale, max(digits - len(str(int(scale))) + 1, 0))


def is_sparse(key: str) -> bool:
    """Evaluation series (a point every eval_every steps): drawn with markers and never smoothed."""
    return key.startswith(EVAL_PREFIX)
