"""A character-level tokenizer with a chat template, saved and loaded like a hub tokenizer."""

from __future__ import annotations

import string

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'system' %}<|system|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|eos|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"]
DEFAULT_CHARS = string.digits + string.ascii_letters + " +-*=?.,:;()#\n"


def build_tokenizer(chars: str = DEFAULT_CHARS):
    """Every character is a token; the special tokens frame the chat turns (the assistant's ends in EOS)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(set(chars)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|pad|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|eos|>", additional_special_tokens=SPECIAL_TOKENS[2:]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
