"""Tiny stand-ins for the model families teams distil: Qwen2.5, Qwen3, Llama-3, Gemma-2, Phi-3, Mistral.

Each family gets what its hub checkpoints would give, built at test time in about a second: a byte-level
BPE tokenizer trained on a few KB of text with the family's special tokens, eos, pad and bos as the real
tokenizer sets them, a hand-written chat template with the real template's structure (our own jinja,
not the real file), and a random-init student and a slightly bigger teacher of the family's architecture.

The generation config lists only the tokenizer's eos (as many fine-tuned checkpoints ship it), so the
end-of-turn token must come from the chat template. The student is tilted to emit its end-of-turn token
first (`_prefer_token`): a run that stops generation there samples exactly that one token, a run that
does not samples it again until max_new_tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- chat templates (jinja written for these tests, shaped like the families' own) -------------------
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

QWEN25_TEMPLATE = r"""
{%- if messages[0].role == 'system' -%}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' -}}
{%- set turns = messages[1:] -%}
{%- else -%}
{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' -}}
{%- set turns = messages -%}
{%- endif -%}
{%- for m in turns -%}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

# Qwen3: reasoning is shown only in assistant turns after the last user turn; history drops it
QWEN3_TEMPLATE = r"""
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
{%- if m.role == 'assistant' -%}
{%- set answer = m.content -%}
{%- set reasoning = '' -%}
{%- if '</think>' in answer -%}
{%- set reasoning = answer.split('</think>')[0].split('<think>')[-1].strip('\n') -%}
{%- set answer = answer.split('</think>')[-1].lstrip('\n') -%}
{%- endif -%}
{%- if loop.index0 > ns.last_user -%}
{{- '<|im_start|>assistant\n<think>\n' + reasoning + '\n</think>\n\n' + answer + '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>assistant\n' + answer + '<|im_end|>\n' -}}
{%- endif -%}
{%- else -%}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}
{%- endif -%}
"""

LLAMA3_TEMPLATE = r"""
{{- bos_token -}}
{%- for m in messages -%}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + (m.content | trim) + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
"""

GEMMA2_TEMPLATE = r"""
{{- bos_token -}}
{%- if messages[0].role == 'system' -%}{{- raise_exception('System role not supported') -}}{%- endif -%}
{%- for m in messages -%}
{%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
{%- endif -%}
{%- set role = 'model' if m.role == 'assistant' else m.role -%}
{{- '<start_of_turn>' + role + '\n' + (m.content | trim) + '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"""

# Phi-3 ends a rendered conversation with eos after the last turn's `<|end|>\n`
PHI3_TEMPLATE = r"""
{%- for m in messages -%}
{{- '<|' + m.role + '|>\n' + m.content + '<|end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- else -%}{{- eos_token -}}{%- endif -%}
"""

MISTRAL_TEMPLATE = r"""
{{- bos_token -}}
{%- for m in messages -%}
{%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
{%- endif -%}
{%- if m.role == 'user' -%}{{- '[INST] ' + m.content + ' [/INST]' -}}
{%- else -%}{{- m.content + eos_token -}}{%- endif -%}
{%- endfor -%}
"""


@dataclass(frozen=True)
class Family:
    """What a family's tokenizer and config look like; `end_of_turn` closes an assistant turn in its template."""

    name: str
    arch: str  # key of ARCHITECTURES
    template: str
    end_of_turn: str
    eos: str
    pad: str | None  # None: no pad token (Llama-3, Mistral)
    bos: str | None  # prepended to plain text by the tokenizer (and by the template where it says bos_token)
    leading: tuple[str, ...]  # special tokens at the start of the vocabulary (ids 0..)
    trailing: tuple[str, ...]  # special tokens after the merges (Qwen, Llama-3)
    plain_added: tuple[str, ...] = ()  # added tokens that are not special (Qwen3's <think>)
    system_role: bool = True  # the template accepts a system message
    config: dict[str, Any] = field(default_factory=dict)  # extra config fields of the architecture


QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen2.5", "qwen2", QWEN25_TEMPLATE, "<|im_end|>", eos="<|im_end|>", pad="<|endoftext|>", bos=None,
               leading=(), trailing=QWEN_TOKENS),
        Family("qwen3", "qwen3", QWEN3_TEMPLATE, "<|im_end|>", eos="<|im_end|>", pad="<|endoftext|>", bos=None,
               leading=(), trailing=QWEN_TOKENS, plain_added=("<think>", "</think>")),
        Family("llama3", "llama", LLAMA3_TEMPLATE, "<|eot_id|>", eos="<|end_of_text|>", pad=None,
               bos="<|begin_of_text|>", leading=(),
               trailing=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>")),
        Family("gemma2", "gemma2", GEMMA2_TEMPLATE, "<end_of_turn>", eos="<eos>", pad="<pad>", bos="<bos>",
               leading=("<pad>", "<eos>", "<bos>", "<unk>"), trailing=("<start_of_turn>", "<end_of_turn>"),
               system_role=False, config={"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}),
        Family("phi3", "phi3", PHI3_TEMPLATE, "<|end|>", eos="<|endoftext|>", pad="<|endoftext|>", bos="<s>",
               leading=("<unk>", "<s>", "</s>"),
               trailing=("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")),
        Family("mistral", "mistral", MISTRAL_TEMPLATE, "</s>", eos="</s>", pad=None, bos="<s>",
               leading=("<unk>", "<s>", "</s>"), trailing=("[INST]", "[/INST]"), system_role=False),
    )
}  # fmt: skip
# Qwen3-Base: the same vocabulary and template as Qwen3, but its eos is <|endoftext|> only
QWEN3_BASE = Family("qwen3-base", "qwen3", QWEN3_TEMPLATE, "<|im_end|>", eos="<|endoftext|>", pad="<|endoftext|>",
                    bos=None, leading=(), trailing=QWEN_TOKENS, plain_added=("<think>", "</think>"))  # fmt: skip


# --- tokenizer ----------------------------------------------------------------------------------------
CORPUS = (
    "the capital of France is Paris and the capital of Italy is Rome while Spain has Madrid "
    "think step by step about the question then answer briefly you are a helpful assistant "
    "numbers add up two plus three makes five and seven times six is forty two"
)


def corpus() -> list[str]:
    """About 12 KB: enough merges that words are a few tokens each; every printable byte appears."""
    words = CORPUS.split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    return [*lines, bytes(range(32, 127)).decode()]


def build_tokenizer(family: Family, path: Path | None = None):
    """The family's byte-level BPE tokenizer (about 400 tokens) with its chat template; saved to `path` if given."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(family.leading), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    backend.train_from_iterator(corpus(), trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in family.trailing])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.plain_added])
    if family.bos:  # plain text gets the bos the real tokenizer adds
        bos_id = backend.token_to_id(family.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A $B", special_tokens=[(family.bos, bos_id)]
        )
    specials = {"eos_token": family.eos, "pad_token": family.pad, "bos_token": family.bos}
    if "<unk>" in family.leading:
        specials["unk_token"] = "<unk>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **{k: v for k, v in specials.items() if v})
    tokenizer.chat_template = family.template.strip()
    if path is not None:
        tokenizer.save_pretrained(path)
    return tokenizer


# --- models ---------------------------------------------------------------------------------------------
def _config_class(arch: str):
    import transformers

    names = {"qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "llama": "LlamaConfig", "gemma2": "Gemma2Config",
             "phi3": "Phi3Config", "mistral": "MistralConfig"}  # fmt: skip
    return getattr(transformers, names[arch])


def build_model(family: Family, tokenizer, path: Path, *, hidden: int, layers: int, seed: int,
                vocab_size: int | None = None, prefer: str | None = None):  # fmt: skip
    """A random-init causal LM of the family's architecture (head_dim 16), saved with its tokenizer.

    `vocab_size` above len(tokenizer) pads the embedding and lm_head (as Qwen2.5's bigger sizes do);
    `prefer` tilts the model to emit that token (see `_prefer_token`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    ids = {name: tokenizer.convert_tokens_to_ids(token) if token else None
           for name, token in (("eos", family.eos), ("pad", family.pad), ("bos", family.bos))}  # fmt: skip
    config = _config_class(family.arch)(
        vocab_size=vocab_size or len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=hidden // 16, num_key_value_heads=hidden // 16,
        head_dim=16, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=ids["eos"], pad_token_id=ids["pad"], bos_token_id=ids["bos"], **family.config,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    if prefer is not None:
        _prefer_token(model, tokenizer.convert_tokens_to_ids(prefer))
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.bos_token_id = ids["bos"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def _prefer_token(model, token_id: int) -> None:
    """Make `token_id` the model's next token almost surely (p > 1 - 1e-6), at every position.

    A large constant first coordinate in every embedding dominates the residual stream (Gemma-2's
    normed sublayer outputs add about sqrt(H) each), so the final norm's output is close to
    +sqrt(H) e_0 everywhere; only `token_id`'s lm_head row reads e_0.
    """
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 20.0  # (V, H): the rest are N(0, 0.02)
        head = model.get_output_embeddings().weight  # (V', H)
        head[:, 0] = 0.0
        head[token_id, 0] = 5.0  # logit ~ 5 sqrt(32) = 28 (Gemma-2 caps it at 30 tanh(28/30) = 22); the rest ~ 0


# --- data ---------------------------------------------------------------------------------------------------
def chat_rows(family: Family) -> list[dict[str, Any]]:
    """Four rows: with a system turn (where the template has one), single turn, multi-turn, and a
    messages prompt with a string completion. Distinct answers, so a trained row names its source row.
    Qwen3's answers carry a <think> block, as its template renders the turn after the last user message."""
    thinking = "<think>" in family.plain_added

    def say(reasoning: str, answer: str) -> str:
        return f"<think>\n{reasoning}\n</think>\n\n{answer}" if thinking else answer

    system = [{"role": "system", "content": "Answer briefly."}] if family.system_role else []
    return [
        {"messages": [*system, {"role": "user", "content": "the capital of France?"},
                      {"role": "assistant", "content": say("the capital of France", "Paris")}]},
        {"messages": [{"role": "user", "content": "two plus three?"},
                      {"role": "assistant", "content": say("two plus three", "five")}]},
        {"messages": [{"role": "user", "content": "the capital of Italy?"},
                      {"role": "assistant", "content": say("Italy", "Rome")},  # history: Qwen3 drops its think
                      {"role": "user", "content": "and Spain?"},
                      {"role": "assistant", "content": say("Spain", "Madrid")}]},
        {"prompt": [*system, {"role": "user", "content": "seven times six?"}],
         "completion": say("seven times six", "forty two")},
    ]  # fmt: skip


def expected_training(rows: list[dict[str, Any]], tokenizer, end_of_turn: str) -> dict[str, str]:
    """{the prompt as the template renders it: the text the row must train}: the last assistant message's
    content and the end-of-turn token; nothing of the prompt, nothing after the end of the turn."""
    expected = {}
    for row in rows:
        if "messages" in row:
            prompt, answer = row["messages"][:-1], row["messages"][-1]["content"]
        else:
            prompt, answer = row["prompt"], row["completion"]
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        expected[text] = answer + end_of_turn
    return expected


# --- a built pair -----------------------------------------------------------------------------------------------
@dataclass
class FamilyPair:
    family: Family
    student: Path
    teacher: Path
    train_data: Path
    rows: list[dict[str, Any]]
    tokenizer: Any  # the student's
    vocab: int  # len(tokenizer)

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.family.end_of_turn)

    def spec_fields(self, **overrides: Any) -> dict[str, Any]:
        """A mixed on/off-policy run of two steps (seed 3 draws dataset, student, dataset, student)."""
        fields = dict(
            student=str(self.student), teacher=str(self.teacher), train_data=str(self.train_data), eval_data="",
            lmbda=0.5, seed=3, max_steps=2, batch_size=len(self.rows), grad_accum=2, max_new_tokens=4,
            learning_rate=1e-3, eval_every=0, save_every=0,
        )  # fmt: skip
        return fields | overrides


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_pair(name: str, root: Path) -> FamilyPair:
    """The family's tokenizer, student (hidden 32, 1 layer), teacher (hidden 64, 2 layers) and chat data.

    name: a key of FAMILIES, "qwen2.5-padded" (one tokenizer, lm_heads padded to two different sizes,
    like Qwen2.5-0.5B's 151,936 and 7B's 152,064) or "qwen3-base" (a Qwen3-Base-style student, eos
    <|endoftext|> only, taught by a Qwen3-style teacher of the same vocabulary).
    """
    root.mkdir(parents=True, exist_ok=True)
    family = {"qwen2.5-padded": FAMILIES["qwen2.5"], "qwen3-base": QWEN3_BASE}.get(name) or FAMILIES[name]
    tokenizer = build_tokenizer(family)
    vocab = len(tokenizer)
    student_vocab = teacher_vocab = None
    if name == "qwen2.5-padded":
        student_vocab = -(-vocab // 64) * 64 + 64  # len(tok) + k1
        teacher_vocab = student_vocab + 128  # len(tok) + k2
    teacher_family, teacher_tokenizer = family, tokenizer
    if name == "qwen3-base":
        teacher_family = FAMILIES["qwen3"]
        teacher_tokenizer = build_tokenizer(teacher_family)
    build_model(family, tokenizer, root / "student", hidden=32, layers=1, seed=1, vocab_size=student_vocab,
                prefer=family.end_of_turn)  # fmt: skip
    build_model(teacher_family, teacher_tokenizer, root / "teacher", hidden=64, layers=2, seed=2,
                vocab_size=teacher_vocab)  # fmt: skip
    rows = chat_rows(family)
    data = write_jsonl(root / "train.jsonl", rows)
    return FamilyPair(family, root / "student", root / "teacher", data, rows, tokenizer, vocab)


class FamilyPairs:
    """Pairs built on first use and kept for the session (each in about a second)."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, FamilyPair] = {}

    def __call__(self, name: str) -> FamilyPair:
        if name not in self._built:
            self._built[name] = build_pair(name, self.root / name)
        return self._built[name]
