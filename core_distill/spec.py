"""The one description of a distillation experiment.

`DistillSpec` is used unchanged by the engine (`distill run`), the REST API (request schema),
the database (stored whole as JSON and re-validated on read), the worker and the UI form
(generated from the field metadata). Declare a field here and nowhere else.

Conventions (those of the GKD paper, TRL and ms-swift):
    beta = 0   forward KL(teacher || student)   (mode covering)
    beta = 1   reverse KL(student || teacher)   (mode seeking)
    0<beta<1   generalized JSD with mixture M = beta * teacher + (1 - beta) * student
"""

from __future__ import annotations

import difflib
import json
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from core_distill.paths import (
    HUB_REPO_ID_PATTERN,
    is_hub_dataset,
    looks_like_local_path,
    missing_model_message,
    repo_id_problem,
    resolve_data_path,
    resolve_model_path,
)
from core_distill.trackers.names import TrackerName, missing_packages, normalize_report_to

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
AttnImplementation = Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"]
SPLIT_PATTERN = r"^[A-Za-z0-9_.\-]*$"  # split and config names as `datasets` writes them
PATH_FIELDS = frozenset({"student", "teacher", "train_data", "eval_data"})  # models and data: hub ids or paths
MAX_PATH_COMPONENT = 255  # the longest file name Linux (NAME_MAX) and most file systems allow


class SpecError(ValueError):
    """A spec that cannot run; `errors` maps each bad field to what is wrong with it."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in errors.items()))


def _field(default: Any, help: str, group: str, **constraints: Any) -> Any:
    # `group` orders the UI form; `help` is the tooltip, the CLI help and the OpenAPI description.
    extra = {"group": group, **constraints.pop("schema_extra", {})}  # e.g. a pattern the validator enforces
    return Field(default, description=help, json_schema_extra=extra, **constraints)


class DistillSpec(BaseModel):
    """A distillation experiment: models, method knobs, data and training settings."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # --- models ---------------------------------------------------------------------------------
    student: str = _field(
        "toy:student",
        "Student model: a hub id or a local directory saved with save_pretrained "
        "('toy:NAME' is the built-in countdown task's model, shipped with the package).",
        "models",
        min_length=1,
        max_length=1024,
    )
    teacher: str = _field(
        "toy:teacher",
        "Teacher model (hub id or local directory). Empty means self-distillation: the student "
        "itself, which needs opsd=dynamic or fixed.",
        "models",
        max_length=1024,
    )
    teacher_server_url: str = _field(
        "",
        "URL of a teacher server (`distill teacher serve`) used instead of loading the teacher; "
        "needs loss_top_k > 0.",
        "models",
        max_length=1024,
    )
    teacher_server_api: Literal["distill", "vllm"] = _field(
        "distill",
        "What answers at teacher_server_url: distill = `distill teacher serve` (binary protocol); vllm = "
        "an OpenAI-compatible `vllm serve TEACHER --max-logprobs K` (top-K prompt log-probs, K <= its max_logprobs).",
        "models",
    )
    trust_remote_code: bool = _field(
        False, "Allow model repositories to run their own Python code (off unless you trust them).", "models"
    )
    generation_backend: Literal["hf", "vllm"] = _field(
        "hf",
        "How the student samples on-policy completions: hf = transformers generate with the KV cache; "
        "vllm = an in-process vLLM engine synced with the student's weights before each round.",
        "models",
    )
    token_draw: Literal["multinomial", "inverse_cdf"] = _field(
        "multinomial",
        "How each sampled token of the training rollouts (on-policy and seq_kd, HF generation) is drawn: "
        "multinomial = transformers' torch.multinomial (the documented results were sampled so); inverse_cdf = "
        "a seeded inverse-CDF draw (cumsum + searchsorted), the same distribution but other tokens, the draw "
        "about 10x faster than multinomial over a large vocabulary on CPU. Evaluation always uses multinomial.",
        "models",
    )
    teacher_cache: bool = _field(
        False,
        "Cache the teacher's top-K log-probs of dataset completions on disk, shared by runs on this "
        "machine, so sweeps do not recompute them (needs loss_top_k > 0).",
        "models",
    )
    dtype: Dtype = _field(
        "auto",
        "Compute precision: auto = bfloat16 on GPUs that support it, float32 on CPU.",
        "models",
    )
    attn_implementation: AttnImplementation = _field(
        "auto",
        "Attention kernel of the student and a local teacher: auto = what the model family needs to compute its own "
        "distribution (eager when its config sets attn_logit_softcapping, as Gemma-2's does, which sdpa skips; else "
        "transformers' default, sdpa); any other value is passed to from_pretrained (sdpa is refused for a model with "
        "attention softcapping).",
        "models",
    )

    # --- method ---------------------------------------------------------------------------------
    objective: Literal["gkd", "minillm", "sft"] = _field(
        "gkd",
        "gkd: token-level generalized JSD between student and teacher. minillm: the sampled-token "
        "reverse-KL policy gradient of MiniLLM / on-policy distillation (needs lmbda = 1). sft: plain "
        "cross-entropy on the dataset's completions (with seq_kd: on the teacher's), the baseline.",
        "method",
    )
    lmbda: float = _field(
        0.5,
        "Share of micro-batches whose completions the student samples itself (on-policy); "
        "the rest use the dataset's completion (or the teacher's own with seq_kd).",
        "method",
        ge=0.0,
        le=1.0,
    )
    beta: float = _field(
        0.5,
        "Generalized JSD interpolation: 0 = forward KL(teacher||student), 1 = reverse KL(student||teacher).",
        "method",
        ge=0.0,
        le=1.0,
    )
    temperature: float = _field(
        1.0,
        "Sampling temperature of on-policy and seq_kd generation (1 = the model's own distribution, which "
        "on-policy objectives assume; lower values sample closer to greedy).",
        "method",
        gt=0.0,
        le=10.0,
    )
    kd_temperature: float = _field(
        1.0,
        "Temperature applied to student and teacher logits inside the loss (1 = the raw distributions).",
        "method",
        gt=0.0,
        le=10.0,
    )
    max_new_tokens: int = _field(
        256, "Longest completion sampled on-policy, by seq_kd and at evaluation.", "method", ge=1, le=32768
    )
    seq_kd: bool = _field(
        False,
        "Sequence-level KD: off-policy micro-batches use a completion sampled by the teacher "
        "instead of the dataset's.",
        "method",
    )
    loss_top_k: int = _field(
        0,
        "0 = exact loss over the full vocabulary. K > 0 = the teacher's top K tokens plus one tail "
        "bucket holding the rest of each distribution's mass.",
        "method",
        ge=0,
        le=1_000_000,
    )
    sft_alpha: float = _field(
        0.0,
        "Weight of a cross-entropy (SFT) term on completions the student did not sample itself.",
        "method",
        ge=0.0,
        le=100.0,
    )
    opsd: Literal["off", "dynamic", "fixed"] = _field(
        "off",
        "On-policy self-distillation: the teacher is the student's own network shown the "
        "'teacher_prompt' column (privileged context). dynamic = current weights, fixed = frozen "
        "initial weights.",
        "method",
    )
    rkl_advantage: bool = _field(
        True,
        "minillm: policy-gradient term whose advantage is the reward-to-go of r = log p_teacher - log p_student "
        "(from the next token on when single_step_decomposition is on, which already covers the current one).",
        "minillm",
    )
    single_step_decomposition: bool = _field(
        True, "minillm: add the exact full-vocabulary reverse KL at every sampled position.", "minillm"
    )
    gamma: float = _field(
        0.0,
        "minillm: discount of the reward-to-go (0 = no long-term term beside the single-step decomposition; "
        "without it, each token's own log-ratio only).",
        "minillm",
        ge=0.0,
        le=1.0,
    )
    length_normalization: bool = _field(
        True, "minillm: divide the discounted reward-to-go by the sum of its discounts.", "minillm"
    )

    # --- data -----------------------------------------------------------------------------------
    train_data: str = _field(
        "toy:train",
        "Training data: a JSONL or Parquet file or a saved `datasets` directory with 'messages', "
        "'prompt'/'completion' or prompt-only rows (optional 'teacher_prompt' column for OPSD).",
        "data",
        min_length=1,
        max_length=1024,
    )
    eval_data: str = _field(
        "toy:eval",
        "Evaluation data, same formats (or a hub dataset id, as train_data); empty = no evaluation.",
        "data",
        max_length=1024,
    )
    train_split: str = _field(
        "",
        "Split of train_data when it holds several (a `save_to_disk` DatasetDict, a hub dataset); empty = 'train', "
        "or its only split.",
        "data",
        max_length=128,
        pattern=SPLIT_PATTERN,
    )
    eval_split: str = _field(
        "",
        "Split of eval_data when it holds several; empty = 'test', else 'validation' (never the training split "
        "unless named here).",
        "data",
        max_length=128,
        pattern=SPLIT_PATTERN,
    )
    dataset_config: str = _field(
        "",
        "Configuration (subset) of the hub datasets named in train_data / eval_data; empty = the default one.",
        "data",
        max_length=128,
        pattern=SPLIT_PATTERN,
    )
    dataset_revision: str = _field(
        "",
        "Branch, tag or commit of the hub datasets named in train_data / eval_data; empty = main (offline, only a "
        "commit can be matched to the cache).",
        "data",
        max_length=256,
        pattern=r"^[A-Za-z0-9_.\-/]*$",
    )
    max_prompt_length: int = _field(
        512, "Prompts longer than this many tokens are shortened as `truncation` says.", "data", ge=1, le=131072
    )
    max_completion_length: int = _field(
        512, "Dataset completions longer than this many tokens are shortened as `truncation` says.", "data", ge=1,
        le=131072,
    )  # fmt: skip
    truncation: Literal["middle", "refuse"] = _field(
        "middle",
        "Rows over max_prompt_length / max_completion_length: middle = a prompt keeps its start (BOS, the system "
        "turn) and its end (the last user turn, the assistant header), losing its oldest turns, then tokens in the "
        "middle; a completion keeps its end-of-turn tokens and loses the tokens before them; refuse = such a row is "
        "a data error naming it.",
        "data",
    )
    system_message: Literal["keep", "fold"] = _field(
        "keep",
        "System messages of chat rows: keep = given to the student's chat template as they are; fold = merged "
        "into the next user message (a blank line between), for templates without a system role that refuse "
        "them (Gemma-2, Mistral).",
        "data",
    )
    assistant_turns: Literal["last", "all"] = _field(
        "last",
        "Which assistant turns of a multi-turn train_data conversation are trained: last = the final one (TRL's "
        "choice); all = every one, each as its own example, a reply to the conversation before it. Eval rows "
        "score their last turn.",
        "data",
    )
    eval_examples: int = _field(64, "How many eval rows to score at each evaluation.", "data", ge=1, le=100000)
    eval_metric: Literal["exact_match", "final_answer", "countdown"] = _field(
        "exact_match",
        "Task metric at evaluation (see eval_temperature): exact_match compares whole completions; final_answer "
        "compares the text after the last '####' (else after the last '=' of the last line); countdown checks the "
        "built-in task's rules, so any valid walk counts.",
        "data",
    )
    eval_temperature: float = _field(
        0.0,
        "Decoding of the evaluation's completions: 0 = greedy; > 0 = sampled at this temperature (from the run's "
        "seed, the same at every evaluation), which grades the distribution a model puts on its answers when many are valid.",
        "data",
        ge=0.0,
        le=10.0,
    )
    eval_completions_logged: int = _field(
        4, "How many sampled eval completions to log, with per-token divergences.", "data", ge=0, le=64
    )

    # --- training -------------------------------------------------------------------------------
    learning_rate: float = _field(5e-5, "Peak learning rate of AdamW.", "training", gt=0.0, le=1.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = _field(
        "linear", "Decay after warm-up.", "training"
    )
    warmup_steps: int = _field(0, "Linear warm-up, in optimizer steps.", "training", ge=0, le=1_000_000)
    weight_decay: float = _field(0.0, "AdamW weight decay.", "training", ge=0.0, le=10.0)
    max_grad_norm: float = _field(1.0, "Gradient clipping norm (0 = off).", "training", ge=0.0, le=1e6)
    max_steps: int = _field(100, "Optimizer steps to train.", "training", ge=1, le=10_000_000)
    batch_size: int = _field(4, "Rows per micro-batch.", "training", ge=1, le=4096)
    grad_accum: int = _field(1, "Micro-batches per optimizer step.", "training", ge=1, le=1024)
    seed: int = _field(0, "Seed of data order, the on/off-policy draws and sampling.", "training", ge=0, le=2**31 - 1)
    loss_chunk_size: int = _field(
        0,
        "Completion positions per chunk of hidden states x lm_head (0 = auto: about 8M logits per chunk).",
        "training",
        ge=0,
        le=65536,
    )
    lora: bool = _field(False, "Train LoRA adapters (peft) instead of all student weights.", "training")
    lora_r: int = _field(16, "LoRA rank.", "training", ge=1, le=1024)
    lora_alpha: int = _field(32, "LoRA alpha.", "training", ge=1, le=4096)
    lora_dropout: float = _field(0.0, "LoRA dropout.", "training", ge=0.0, lt=1.0)
    lora_target_modules: str = _field(
        "all-linear", "Modules that get adapters: 'all-linear' or comma-separated names.", "training", min_length=1
    )
    gpus: int = _field(
        1,
        "Processes of one run, one per GPU (on a CPU-only host: one gloo process per slot). batch_size is the "
        "global micro-batch: each process takes batch_size / gpus of its rows, so a spec trains the same at any gpus.",
        "training",
        ge=1,
        le=64,
    )
    sharding: Literal["none", "fsdp"] = _field(
        "none",
        "How the student is spread over gpus > 1: none = a full copy per process (DDP); fsdp = FSDP2, weights, "
        "gradients and optimizer state sharded over the processes (needs gpus > 1).",
        "training",
    )
    gradient_checkpointing: bool = _field(
        False,
        "Recompute the student's activations in backward instead of keeping them (non-reentrant): less memory "
        "for long completions, about one more forward of compute.",
        "training",
    )
    teacher_placement: Literal["replicated", "sharded", "offload"] = _field(
        "replicated",
        "Where a local teacher lives: replicated = a full copy per process; sharded = FSDP2-sharded over the "
        "processes like the student (needs gpus > 1); offload = kept in CPU memory, moved to the GPU for each "
        "forward and back.",
        "training",
    )
    eval_every: int = _field(
        50, "Evaluate every N optimizer steps (0 = only at the end).", "training", ge=0, le=10_000_000
    )
    save_every: int = _field(
        50, "Checkpoint every N optimizer steps for resume (0 = only at the end).", "training", ge=0, le=10_000_000
    )
    auto_resume_attempts: int | None = _field(
        None,
        "Automatic resumes in a row, from the last checkpoint, when the run is lost (its worker or machine died); "
        "empty = the service's DISTILL_AUTO_RESUME_ATTEMPTS, which a spec can only lower (0 = never).",
        "training",
        ge=0,
        le=100,
    )
    report_to: list[TrackerName] = _field(
        [],
        "Experiment trackers that also get the run (TRL's report_to): mlflow, wandb, tensorboard, trackio; "
        "a list, or one name; none or [] = only the run folder (CLI) or the service's database. Where each "
        "sends its runs: docs/trackers.md.",
        "training",
    )

    push_to_hub: str = _field(
        "",
        "Hub repository the finished model (final/: weights, tokenizer, model card, spec.yaml) is uploaded to, "
        "'ORG/NAME' or 'NAME' (the token's own namespace); empty = none. The token is the usual one (HF_TOKEN, or "
        "`hf auth login`) of the machine that trains; a failed upload warns and keeps final/ (docs/hub.md).",
        "training",
        max_length=200,
        schema_extra={"pattern": HUB_REPO_ID_PATTERN},  # repo_id_problem's rules, declared for clients
    )
    hub_private: bool = _field(
        True, "push_to_hub creates the repository private (off = public); an existing one keeps its visibility.",
        "training",
    )  # fmt: skip

    @field_validator("push_to_hub")
    @classmethod
    def _hub_repo_id(cls, value: str) -> str:
        problem = repo_id_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> list[str]:
        return normalize_report_to(value)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic would read `lmbda: true` as 1.0: a boolean for a number is a mistake, not a value
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and number_type(annotation) is not None:
            raise ValueError("must be a number, not a boolean")
        if annotation is bool and not isinstance(value, bool):  # nor `lora: 0` or "yes" a boolean: say true or false
            raise ValueError(f"must be true or false, got {value!r}"[:200])
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _safe_strings(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("NUL characters (\\x00) are refused")
            if info.field_name in PATH_FIELDS and any(len(part) > MAX_PATH_COMPONENT for part in value.split("/")):
                raise ValueError(f"a path component is longer than {MAX_PATH_COMPONENT} characters")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> DistillSpec:
        errors = self.combination_errors()
        if errors:
            field, msg = next(iter(errors.items()))
            raise ValueError(f"{field}: {msg}")
        return self

    def combination_errors(self) -> dict[str, str]:
        """Rules that involve several fields (ranges are checked by the field types)."""
        errors: dict[str, str] = {}
        for name in ("lmbda", "beta", "temperature", "kd_temperature", "sft_alpha", "gamma", "eval_temperature"):
            if not math.isfinite(getattr(self, name)):
                errors[name] = f"must be a finite number, got {getattr(self, name)!r}"
        if self.teacher_server_url:
            if not self.teacher_server_url.startswith(("http://", "https://")):
                errors["teacher_server_url"] = f"must start with http:// or https://, got {self.teacher_server_url!r}"
            if self.loss_top_k == 0:
                errors["loss_top_k"] = (
                    "must be > 0 with a teacher_server_url: a server returns the teacher's top K "
                    "tokens, not the full vocabulary"
                )
            if self.opsd != "off":
                errors["opsd"] = f"{self.opsd!r} uses the student as teacher; it cannot use a teacher_server_url"
            if self.seq_kd:
                errors["seq_kd"] = "samples completions from the teacher, which a teacher_server_url only scores; use a local teacher"
        if self.teacher_server_api != "distill" and not self.teacher_server_url:
            errors["teacher_server_api"] = (
                f"{self.teacher_server_api!r} names the kind of teacher server; set teacher_server_url too"
            )
        if self.opsd == "dynamic" and self.teacher:
            errors["teacher"] = (
                f"must be empty with opsd='dynamic' (the teacher is the live student), got {self.teacher!r}"
            )
        if self.opsd == "fixed" and self.teacher and self.teacher != self.student:
            errors["teacher"] = (
                f"opsd='fixed' uses a frozen copy of the student; leave teacher empty or equal to the "
                f"student, got {self.teacher!r}"
            )
        needs_teacher = self.objective != "sft" or self.seq_kd
        if self.opsd == "off" and needs_teacher and not self.teacher and not self.teacher_server_url:
            errors["teacher"] = "is empty, which means self-distillation: set opsd to 'dynamic' or 'fixed'"
        if self.objective == "minillm":
            if self.lmbda != 1.0:
                errors["lmbda"] = f"objective='minillm' learns from the student's own samples; set lmbda=1.0, got {self.lmbda}"
            if self.temperature != self.kd_temperature:
                errors["temperature"] = (
                    f"objective='minillm' estimates the gradient of the student's own distribution, so its samples "
                    f"must come from it: set temperature equal to kd_temperature ({self.kd_temperature}), "
                    f"got {self.temperature}"
                )
            if not (self.rkl_advantage or self.single_step_decomposition):
                errors["rkl_advantage"] = (
                    "objective='minillm' needs rkl_advantage or single_step_decomposition (both are off)"
                )
        if self.assistant_turns == "all" and self.opsd != "off":
            errors["assistant_turns"] = "'all' trains turns a row's teacher_prompt (OPSD) does not belong to; with opsd use 'last'"
        if self.teacher_cache and self.loss_top_k == 0:
            errors["teacher_cache"] = "caches the teacher's top K log-probs; set loss_top_k > 0"
        elif self.teacher_cache and self.opsd == "dynamic":
            errors["teacher_cache"] = "opsd='dynamic' scores with the live student, whose log-probs change every step: nothing to cache"
        if self.objective == "sft" and self.lmbda != 0.0:
            errors["lmbda"] = f"objective='sft' trains on dataset (or seq_kd teacher) completions only; set lmbda=0.0, got {self.lmbda}"
        errors.update(self._scale_errors())
        if self.lora and self.lora_target_modules != "all-linear":
            names = [n.strip() for n in self.lora_target_modules.split(",")]
            if not all(n.replace("_", "").replace(".", "").isalnum() for n in names):
                errors["lora_target_modules"] = f"must be 'all-linear' or comma-separated module names, got {self.lora_target_modules!r}"
        return errors

    def _scale_errors(self) -> dict[str, str]:
        """gpus, sharding and teacher_placement against each other and the rest of the spec."""
        errors: dict[str, str] = {}
        if self.batch_size % self.gpus:
            errors["batch_size"] = (
                f"is the global micro-batch, split evenly over the gpus processes: use a multiple of gpus={self.gpus}, "
                f"got {self.batch_size}"
            )
        if self.sharding == "fsdp" and self.gpus == 1:
            errors["sharding"] = "'fsdp' shards the student over several processes; set gpus > 1 or sharding 'none'"
        if self.teacher_placement != "replicated":
            local = "a local teacher"
            if self.teacher_server_url:
                errors["teacher_placement"] = f"places {local}; a teacher_server_url teacher lives on its server: keep 'replicated'"
            elif self.opsd == "dynamic" or (self.opsd == "fixed" and self.lora):
                errors["teacher_placement"] = (
                    "the teacher is the student's own weights here (opsd), placed with the student: keep 'replicated'"
                )
            elif self.teacher_placement == "sharded" and self.gpus == 1:
                errors["teacher_placement"] = "'sharded' spreads the teacher over several processes; set gpus > 1"
            elif self.teacher_placement == "offload" and self.seq_kd:
                errors["teacher_placement"] = "'offload' is for scoring; seq_kd samples from the teacher: use 'replicated' or 'sharded'"
        if self.gpus > 1:
            if self.generation_backend == "vllm":
                errors["generation_backend"] = "'vllm' runs in one process; with gpus > 1 use 'hf'"
            if self.teacher_cache:
                errors["teacher_cache"] = "is written by one process; with gpus > 1 turn it off"
            if self.lora and self.sharding == "fsdp":
                errors["lora"] = "LoRA trains too few weights to need sharding: with lora use sharding 'none' (DDP)"
        return errors

    # --- resources (filesystem and model configs), checked before any weights load -------------
    def preflight(self) -> dict[str, str]:
        """Check what the spec points at: paths exist, vocabularies match, data has the columns.

        Returns:
            notes: {field: what the run will do that its author should know} (rows the length limits shorten).
        Raises:
            SpecError: naming every bad field and its bad value.
        """
        from core_distill.checks.files import check_folder
        from core_distill.checks.preflight import (
            check_data,
            check_teacher_server,
            check_teacher_vocabulary,
            import_checkers,
            load_preflight_tokenizer,
        )
        from core_distill.data.sources import DataError
        from core_distill.models import check_hub_model

        import_checkers()
        errors: dict[str, str] = {}
        hub_state: dict[str, str] = {}  # an unreachable hub is asked once, not once per model
        for name in ("student", "teacher"):
            value = getattr(self, name)
            if value and looks_like_local_path(value) and not resolve_model_path(value).is_dir():
                errors[name] = missing_model_message(value)
            elif value and looks_like_local_path(value):
                try:  # a FIFO named config.json would hold the loaders forever
                    check_folder(Path(resolve_model_path(value)), depth=0)
                except DataError as exc:
                    errors[name] = str(exc)
            elif value and not looks_like_local_path(value):  # a hub id: cached, or a hub that answers in seconds
                hub_error = check_hub_model(value, self.trust_remote_code, hub_state)
                if hub_error:
                    errors[name] = hub_error
        for name in ("train_data", "eval_data"):
            value = getattr(self, name)
            if value and not is_hub_dataset(value) and not resolve_data_path(value).exists():
                errors[name] = f"no data at {value!r} (resolved to {resolve_data_path(value)})"
        errors.update(self._hub_dataset_field_errors())
        errors.update(_attention_errors(self))
        if missing := missing_packages(self.report_to):
            errors["report_to"] = "; ".join(f"{name} {msg}" for name, msg in missing.items())
        if self.teacher_server_url:  # it answers now (its vocabulary is compared when the run connects)
            server_error = check_teacher_server(self.teacher_server_url, self.teacher_server_api)
            if server_error:
                errors["teacher_server_url"] = server_error
        # a teacher_server_url's teacher is compared in its handshake, when the run connects
        local_teacher = self.teacher and self.teacher != self.student and not self.teacher_server_url
        if "student" not in errors and "teacher" not in errors and local_teacher:
            vocab_error = check_teacher_vocabulary(self.student, self.teacher, self.trust_remote_code)
            if vocab_error:
                errors["teacher"] = vocab_error
        notes: dict[str, str] = {}
        if "train_data" not in errors and "eval_data" not in errors:
            tokenizer = None if "student" in errors else load_preflight_tokenizer(self.student, self.trust_remote_code)
            errors.update(check_data(self, tokenizer, notes))
        if errors:
            raise SpecError(errors)
        if self.push_to_hub:  # a note, not an error: the machine that trains may have what this one lacks
            from core_distill.hub import push_problem

            if problem := push_problem():
                notes["push_to_hub"] = f"{problem}; the run will train and keep its model in final/, unpushed"
        return notes

    def _hub_dataset_field_errors(self) -> dict[str, str]:
        """dataset_config / dataset_revision describe hub datasets: set without one, they would be ignored."""
        if any(is_hub_dataset(getattr(self, name)) for name in ("train_data", "eval_data")):
            return {}
        return {
            name: "applies to hub dataset ids ('org/name'), and neither train_data nor eval_data is one; leave it empty"
            for name in ("dataset_config", "dataset_revision")
            if getattr(self, name)
        }

    # --- I/O ------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> DistillSpec:
        """Parse a YAML spec (text or a file path) with `load_yaml`; errors name the field.

        Raises:
            SpecError: a bad field; a key set twice (named, with both lines); YAML that does not parse
                (under `spec`).
        """
        path = Path(text_or_path) if not isinstance(text_or_path, str) or "\n" not in text_or_path else None
        text = path.read_text() if path is not None and path.exists() else str(text_or_path)
        try:
            data = load_yaml(text) or {}
        except DuplicateKeyError as exc:
            raise SpecError({str(exc.key): exc.detail}) from None
        except (yaml.YAMLError, RecursionError) as exc:
            raise SpecError({"spec": f"not valid YAML ({yaml_error_summary(exc)})"}) from None
        if not isinstance(data, dict):
            raise SpecError({"spec": f"must be a mapping of field: value, got {type(data).__name__}"})
        return cls.parse(data)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> DistillSpec:
        """Validate a dict, turning pydantic's errors into a SpecError keyed by field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(validation_errors(exc)) from None

    def to_yaml(self, only_changed: bool = False) -> str:
        data = self.model_dump(exclude_defaults=only_changed)
        return yaml.safe_dump(data, sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any]) -> DistillSpec:
        return DistillSpec.parse({**self.model_dump(), **overrides})


# --- YAML: one strict loader for the CLI, the API and the dashboard ----------------------------------
class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping sets the same key twice (plain YAML keeps the last value silently)."""

    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark):
        self.key = key
        self.detail = f"is set twice (lines {first.line + 1} and {second.line + 1}); keep one"
        super().__init__(None, None, f"{key!r} {self.detail}", second)


class StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (*name: a few aliased lines can expand into gigabytes, the
    "billion laughs") and keys set twice in one mapping (`batch_size: 16` ... `batch_size: 8`)."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error says so below
                if first is not key_node.start_mark:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse one YAML document with `StrictYamlLoader`.

    Raises:
        DuplicateKeyError: a key set twice in one mapping (`.key` names it).
        yaml.YAMLError: anything else that is not valid YAML, or an alias.
    """
    return yaml.load(text, Loader=StrictYamlLoader)  # noqa: S506 (a SafeLoader)


def yaml_error_summary(exc: BaseException) -> str:
    """The first line of a YAML error and where it is ("line 3, column 5")."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def yaml_comment(text: str) -> str:
    """`text` made safe inside a `# ...` YAML comment: every character that is not printable (line
    breaks of any kind, NUL, other control and format characters) is written as its escape (`\\n`)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def spec_reference_markdown() -> str:
    """The field reference of docs/spec.md, generated from the class (never written by hand)."""
    schema = DistillSpec.model_json_schema()
    lines = ["# Experiment spec reference", "",
             "Generated by `distill spec --markdown` from `core_distill/spec.py`; do not edit by hand.", ""]  # fmt: skip
    for group in ("models", "method", "minillm", "data", "training"):
        lines += [f"## {group}", "", "| field | default | allowed | meaning |", "|---|---|---|---|"]
        for name, prop in schema["properties"].items():
            if prop.get("group") == group:
                lines.append(f"| `{name}` | `{json.dumps(prop.get('default'))}` | {_allowed(prop)} | {prop['description']} |")
        lines.append("")
    return "\n".join(lines)


def spec_template_yaml() -> str:
    """The default spec as YAML, each field preceded by its help text."""
    out = []
    for name, info in DistillSpec.model_fields.items():
        out.append(f"# {info.description}")
        out.append(yaml.safe_dump({name: info.default}, sort_keys=False).strip())
    return "\n".join(out) + "\n"


def number_type(annotation: Any) -> type | None:
    """int or float for a number field (`int`, `float | None`, ...), None for any other field."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


def value_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A field's JSON schema without the `null` of an optional field (`int | None`: the int's limits)."""
    return next((p for p in prop.get("anyOf", []) if p.get("type") != "null"), prop)


def _allowed(prop: dict[str, Any]) -> str:
    prop = value_schema(prop)
    if "enum" in prop.get("items", {}):
        return "a list of " + " / ".join(f"`{v}`" for v in prop["items"]["enum"])
    if "enum" in prop:
        return " / ".join(f"`{v}`" for v in prop["enum"])
    bounds = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in prop:
            bounds.append(f"{sign} {prop[key]}")
    if "maxLength" in prop:
        bounds.append(f"≤ {prop['maxLength']} chars")
    return ", ".join(bounds) or prop.get("type", "")


def unknown_field_message(name: str) -> str:
    """For a key that is not a field: the closest field's name, so a typo names its fix."""
    close = difflib.get_close_matches(name, list(DistillSpec.model_fields), n=1, cutoff=0.6)
    return "is not a spec field" + (f"; did you mean '{close[0]}'?" if close else " (`distill spec` lists them)")


def validation_errors(exc: ValidationError) -> dict[str, str]:
    """pydantic errors as {field: message with the bad value}."""
    errors: dict[str, str] = {}
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            msg = unknown_field_message(field)
        elif not err["loc"] and ": " in msg:  # a model-level rule names its own field
            field, msg = msg.split(": ", 1)
        elif "input" in err and err["type"] != "missing":
            msg = f"{msg}, got {json.dumps(err['input'], default=str)[:200]}"
        errors.setdefault(field, msg)
    return errors


def _attention_errors(spec: DistillSpec) -> dict[str, str]:
    """attn_implementation against the models it loads: sdpa would drop attention softcapping."""
    if spec.attn_implementation != "sdpa":
        return {}
    from core_distill.models import attention_problem

    local_teacher = spec.teacher and not spec.teacher_server_url
    for name in dict.fromkeys([spec.student, *([spec.teacher] if local_teacher else [])]):
        problem = attention_problem(name, spec.attn_implementation, spec.trust_remote_code)
        if problem:
            return {"attn_implementation": problem}
    return {}

