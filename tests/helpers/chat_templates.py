"""Tiny byte-level tokenizers with the chat templates of real model families, built and saved locally.

The templates are written by hand with the structure of the released ones (Qwen2.5's default system
turn, Qwen3's `<think>` blocks and history stripping, Llama-3's `<|eot_id|>` and no pad token, Gemma-2's
`<start_of_turn>` turns that raise on a system role, Phi-3's pad = EOS and `<|end|>`, Mistral's
alternating-roles check); the tool-call branches are left out. Every byte is a token, so any text
tokenizes; the families' turn tokens are special tokens after the 256 bytes.

    tokenizer = build_family_tokenizer("gemma2", tmp_path / "gemma2")   # saved with save_pretrained
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3: the thinking block is shown for the assistant turns after the last user query only; older
# turns are rendered with their answer alone (the released template's `last_query_index`).
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1, found=false) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if not ns.found and message.role == 'user' %}"
    "{%- set ns.found = true %}{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}"
    "{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

GEMMA2_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    """A tokenizer's special tokens and template; `end_of_turn` is the token that closes an assistant turn."""

    template: str
    special: list[str]  # special tokens, ids 256, 257, ... in this order
    eos: str
    end_of_turn: str
    pad: str | None = None  # None: no pad token (the engine uses EOS)
    bos: str | None = None
    added: list[str] = field(default_factory=list)  # added, non-special tokens (Qwen3's <think>)


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FAMILIES: dict[str, Family] = {
    "qwen2.5": Family(QWEN25_TEMPLATE, QWEN_SPECIAL, eos="<|im_end|>", end_of_turn="<|im_end|>", pad="<|endoftext|>"),
    "qwen3": Family(
        QWEN3_TEMPLATE,
        QWEN_SPECIAL,
        eos="<|im_end|>",
        end_of_turn="<|im_end|>",
        pad="<|endoftext|>",
        added=["<think>", "</think>"],
    ),
    # a base checkpoint ships the chat template but stops at <|endoftext|> only
    "qwen3-base": Family(
        QWEN3_TEMPLATE,
        QWEN_SPECIAL,
        eos="<|endoftext|>",
        end_of_turn="<|im_end|>",
        pad="<|endoftext|>",
        added=["<think>", "</think>"],
    ),
    "llama3": Family(
        LLAMA3_TEMPLATE,
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        eos="<|end_of_text|>",
        end_of_turn="<|eot_id|>",
        bos="<|begin_of_text|>",
    ),
    "gemma2": Family(
        GEMMA2_TEMPLATE,
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        eos="<eos>",
        end_of_turn="<end_of_turn>",
        pad="<pad>",
        bos="<bos>",
    ),
    "phi3": Family(
        PHI3_TEMPLATE,
        ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        eos="<|endoftext|>",
        end_of_turn="<|end|>",
        pad="<|endoftext|>",
    ),
    "mistral": Family(MISTRAL_TEMPLATE, ["<unk>", "<s>", "</s>"], eos="</s>", end_of_turn="</s>", bos="<s>"),
}


def byte_level_tokenizer(special: list[str], *, eos: str, pad: str | None = None, bos: str | None = None,
                         template: str | None = None, added: list[str] | None = None):  # fmt: skip
    """A byte-level BPE tokenizer without merges (one token per byte) plus `special` tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of the bytes
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(special)  # ids 256, 257, ... in the order given
    named = {"eos_token": eos, "pad_token": pad, "bos_token": bos}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, **{k: v for k, v in named.items() if v is not None},
        extra_special_tokens=[t for t in special if t not in named.values()],
    )  # fmt: skip
    if added:
        tokenizer.add_tokens(added)
    tokenizer.chat_template = template
    return tokenizer


def build_family_tokenizer(name: str, path: Path | None = None):
    """The tokenizer of family `name` (a key of FAMILIES), saved to `path` with save_pretrained when given."""
    family = FAMILIES[name]
    tokenizer = byte_level_tokenizer(
        family.special, eos=family.eos, pad=family.pad, bos=family.bos, template=family.template, added=family.added
    )
    if path is not None:
        tokenizer.save_pretrained(path)
    return tokenizer
