"""Loading students and teachers, and reaching their hidden states and lm_head.

A local path and a hub id go through the same `from_pretrained` call; only the name differs. A hub id
is checked first, in seconds (`check_hub_model`, which the preflight asks too). This module imports
neither the spec nor the checks: functions that read spec fields take the spec as a plain argument.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from core_distill.data.batches import SequenceBatch
from core_distill.losses import Head
from core_distill.paths import hub_reachable, missing_model_message, resolve_model_path

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """A spec's `dtype`: auto = bfloat16 on GPUs that support it, float32 otherwise."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class ModelUnavailableError(OSError):
    """A model that cannot load, said in one line with the way out: a missing folder, a hub id offline."""


_HUB_STATE: dict[str, str] = {}  # an unreachable hub is asked once per process, not once per load
HUB_TIMEOUT = 4.0  # seconds for the one hub request that tells "exists" from "unreachable"


def model_source(name: str, trust_remote_code: bool = False) -> tuple[str, bool]:
    """What `from_pretrained` gets for `name`, and whether it must stay off the network (local_files_only).

    ModelUnavailableError, in seconds and one line, when it cannot load: a missing local folder never
    reaches the hub; a hub id must be cached here or exist on a hub that answers one short request
    (HF_HUB_OFFLINE or no network fails at once instead of after huggingface_hub's five retries). A cached
    hub id on a machine that cannot reach the hub loads from the cache without trying it.
    """
    path = resolve_model_path(name)
    if isinstance(path, Path):
        if not path.is_dir():
            raise ModelUnavailableError(missing_model_message(name))
        return str(path), False
    problem = check_hub_model(name, trust_remote_code, _HUB_STATE)
    if problem:
        raise ModelUnavailableError(problem)
    return name, hub_offline() or not hub_reachable()


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as the environment says now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_hub_model(name: str, trust_remote_code: bool, hub_state: dict[str, str] | None = None) -> str | None:
    """None if the hub id `name` is cached here or exists on a reachable hub; else what is wrong.

    `hub_state` (one dict per preflight) remembers an unreachable hub, so a second model does not wait again.
    """
    from transformers import AutoConfig

    hub_state = {} if hub_state is None else hub_state
    try:
        AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
        return None  # in the local cache: the run needs no network
    except (OSError, ValueError):
        pass
    if hub_offline():
        return (
            f"{name!r} is not a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE is set: "
            "download it first or name a local directory"
        )
    down = hub_state.get("down")
    if down is None:  # the hub has not failed yet in this preflight: ask it
        answer = _ask_hub(name)
        if answer is None or answer.startswith("no model"):
            return answer
        down = hub_state["down"] = answer
    return (
        f"{name!r} is not a local directory and the Hugging Face hub is unreachable ({down}); "
        "download it first or name a local directory"
    )


def _ask_hub(name: str) -> str | None:
    """One request to the hub: None if `name` exists, "no model ..." if not, else why the hub did not answer."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(name, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        return None  # it exists; the worker's token decides
    except RepositoryNotFoundError:
        return f"no model {name!r} on the Hugging Face hub (and it is not a local directory)"
    except Exception as exc:  # noqa: BLE001  (httpx, OSError, HTTP errors: all mean "cannot reach it")
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source, local_only = model_source(name, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {name!r} has no eos token; completions could never end")
    return tokenizer


def load_model(
    name: str, *, dtype: torch.dtype, trust_remote_code: bool = False, attn_implementation: str = "auto"
) -> nn.Module:
    """The model `name` in `dtype`, with the attention kernel its family needs (`attn_implementation`, a spec field)."""
    from transformers import AutoModelForCausalLM

    source, local_only = model_source(name, trust_remote_code)
    chosen = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    # adapter_kwargs: transformers looks for a PEFT adapter config without the local_files_only it was given
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, local_files_only=local_only, trust_remote_code=trust_remote_code,
        adapter_kwargs={"local_files_only": True} if local_only else None, **chosen,
    )  # fmt: skip
    if attention_softcap(model.config) and model.config._attn_implementation in SOFTCAP_BLIND:
        if attn_implementation != "auto":
            raise ValueError(_softcap_message(name, attention_softcap(model.config)))
        model.set_attn_implementation("eager")  # auto: the family's own distribution (Gemma-2)
    disable_dropout(model)
    return model


# sdpa has no score modifier: transformers passes it `softcap` and it is dropped (eager, flex and flash apply it)
SOFTCAP_BLIND = frozenset({"sdpa", "paged|sdpa"})


def attention_softcap(config) -> float | None:
    """The config's attention-logit softcapping (Gemma-2: 50.0), None when it has none."""
    return getattr(config.get_text_config(), "attn_logit_softcapping", None) or None


def attention_problem(name: str, attn_implementation: str, trust_remote_code: bool = False) -> str | None:
    """Why `attn_implementation` cannot compute model `name`'s distribution (config.json only), else None."""
    from transformers import AutoConfig

    if attn_implementation not in SOFTCAP_BLIND:
        return None
    try:
        config = AutoConfig.from_pretrained(str(resolve_model_path(name)), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None  # the model checks say why it cannot load
    softcap = attention_softcap(config)
    return _softcap_message(name, softcap) if softcap else None


def _softcap_message(name: str, softcap: float) -> str:
    return (f"sdpa skips the attention-logit softcapping ({softcap}) of {name!r}, so its log-probs would not be the "
            "model's: use auto (eager here), eager, flex_attention or flash_attention_2")  # fmt: skip


def disable_dropout(model: nn.Module) -> None:
    """Distillation compares two distributions; dropout would add noise to one of them."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def add_lora(model: nn.Module, spec) -> nn.Module:
    """LoRA adapters as the spec's `lora_*` fields say (a DistillSpec; duck-typed, so models stays below spec)."""
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if spec.lora_target_modules == "all-linear" else [
        name.strip() for name in spec.lora_target_modules.split(",")
    ]  # fmt: skip
    config = LoraConfig(
        r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout, target_modules=targets,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, config)


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside DDP/compile wrappers (a peft model stays a peft model)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside accelerate/DDP and peft wrappers."""
    model = unwrap_parallel(model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def head_of(model: nn.Module) -> Head:
    """The lm_head as the loss uses it: its first `vocab_width(model)` rows (all of them unless cut)."""
    lm = causal_lm(model)
    output = lm.get_output_embeddings()
    config = lm.config.get_text_config()
    width = getattr(lm, _WIDTH_ATTR, None)
    bias = getattr(output, "bias", None)
    return Head(
        weight=output.weight if width is None else output.weight[:width],  # a view: gradients reach the rows kept
        bias=bias if width is None or bias is None else bias[:width],
        logit_scale=logit_scale(lm),
        softcap=getattr(config, "final_logit_softcapping", None),  # Gemma 2/3
    )


def logit_scale(lm: nn.Module) -> float:
    """The factor a family's forward applies to lm_head's output (1 for most): a distribution scored from
    hidden states must apply it too."""
    config = lm.config.get_text_config()
    kind = getattr(config, "model_type", "")
    if kind.startswith("granite"):  # Granite, GraniteMoE...: logits / logits_scaling
        return 1.0 / float(getattr(config, "logits_scaling", None) or 1.0)
    if kind == "hyperclovax":  # MuP: logits * logits_scaling
        return float(getattr(config, "logits_scaling", None) or 1.0)
    if kind == "falcon_h1":
        return float(getattr(config, "lm_head_multiplier", None) or 1.0)
    return float(getattr(config, "logit_scale", None) or 1.0)  # Cohere


def completion_hidden(model: nn.Module, batch: SequenceBatch) -> Tensor:
    """Final (normed) hidden states at the positions that predict completion tokens. -> (N, H)

    Calls the model itself (not its decoder) so that DDP/FSDP hooks run; `logits_to_keep=1`
    keeps the full-vocabulary logits from ever being built.
    """
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    width = batch.completion_mask.shape[1]
    hidden = out.hidden_states[-1][:, batch.prompt_width - 1 : batch.prompt_width - 1 + width]  # (B, C, H)
    return hidden[batch.completion_mask]


def vocab_size(model: nn.Module) -> int:
    """Rows of the model's lm_head (padding rows included)."""
    return causal_lm(model).get_output_embeddings().weight.shape[0]


def model_vocabulary(model: nn.Module, tokenizer):
    """The `core_distill.data.vocab.Vocabulary` of a loaded model and its tokenizer (the whole head's rows)."""
    from core_distill.data.vocab import vocabulary_of

    lm = causal_lm(model)
    generation = getattr(lm, "generation_config", None)
    return vocabulary_of(tokenizer, head=vocab_size(lm), generation_eos=getattr(generation, "eos_token_id", None))


# A model whose head is cut carries the width on its CausalLM module, so the loss, top-K, evaluation
# and sampling all read the same one (core_distill/data/vocab.py says when heads are cut).
_WIDTH_ATTR = "distill_vocab_width"


def cut_vocabulary(model: nn.Module, width: int | None) -> None:
    """Use only the first `width` rows of the model's lm_head from now on (None: all of them)."""
    lm = causal_lm(model)
    if width is not None and not 0 < width <= vocab_size(lm):
        raise ValueError(f"cannot cut an lm_head of {vocab_size(lm)} rows to {width}")
    setattr(lm, _WIDTH_ATTR, None if width is None or width == vocab_size(lm) else width)


def vocab_width(model: nn.Module) -> int:
    """The ids the model predicts: its head's rows, or fewer once cut."""
    lm = causal_lm(model)
    return getattr(lm, _WIDTH_ATTR, None) or vocab_size(lm)
