"""Chat turns as the student's chat template writes them: where an assistant turn ends, system
messages for templates that have no system role, and the assistant turns of a conversation.

One notion of "end of turn" serves the whole engine: the token the template writes right after an
assistant message's content (`<|im_end|>` Qwen, `<|eot_id|>` Llama-3, `<end_of_turn>` Gemma,
`<|end|>` Phi-3, `</s>` Mistral), or the tokenizer's EOS when there is no template or it writes no
special token there. Dataset completions end with it (batches.py), generation stops at it beside EOS
(generation/stops.py's eos_token_ids, base students included), and `completion/eos_rate` counts it.
"""

from __future__ import annotations

from typing import Any

# A probe answer the template renders verbatim (no spaces to trim, no '</think>' to split on).
_PROBE = "Zq7probe"


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn in `tokenizer`'s chat template (EOS when it cannot tell)."""
    eos = tokenizer.eos_token_id
    if not getattr(tokenizer, "chat_template", None):
        return eos
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except Exception:  # noqa: BLE001  (a template that cannot draw this exchange has no turn end to read)
        return eos
    if not isinstance(text, str) or _PROBE not in text:
        return eos
    after = text[text.rindex(_PROBE) + len(_PROBE) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    # the first special token after the content; text before it (a space) would be part of the answer
    return next((i for i in ids if i in special), eos)


def end_completion(ids: list[int], end_id: int) -> list[int]:
    """`ids` up to and including the first end-of-turn token, or with it appended when it is missing.

    What a template writes after the end of turn (the '\\n' of Qwen, Gemma and Phi-3, Phi-3's final
    EOS) is not trained: generation stops at the end of turn, so on-policy samples never hold those
    tokens, and the off-policy half must teach the same stop as the on-policy half (TRL trains them
    off-policy and never samples them). The next turn's rendering puts them back in the context.
    """
    if end_id in ids:
        return ids[: ids.index(end_id) + 1]
    return [*ids, end_id]


def fold_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System messages merged into the user message after them (a blank line between), as Gemma-3's
    template does, for templates without a system role (Gemma-2, Mistral) that raise on one.
    A system message with no user message next becomes a user message in its place."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for message in messages:
        if message.get("role") == "system":
            pending.append(_text(message))
            continue
        if pending:
            if message.get("role") == "user":
                message = {**message, "content": "\n\n".join([*pending, _text(message)])}
            else:
                out.append({"role": "user", "content": "\n\n".join(pending)})
            pending = []
        out.append(message)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(
            f"system_message 'fold' needs text content, got a {type(content).__name__} in a {message.get('role')!r} message"
        )
    return content


def split_turns(prompt: Any, completion: Any, teacher_prompt: Any) -> list[tuple[Any, Any, Any]]:
    """(prompt, completion, teacher_prompt) for every assistant turn of a conversational row, each given
    the conversation before it, in order; any other row as it is.

    The row's teacher_prompt (OPSD) belongs to its last turn only.
    """
    if not isinstance(prompt, list) or not (completion is None or isinstance(completion, list)):
        return [(prompt, completion, teacher_prompt)]
    conversation = [*prompt, *(completion or [])]
    turns = [i for i, m in enumerate(conversation) if i > 0 and m.get("role") == "assistant"]
    if not turns:
        return [(prompt, completion, teacher_prompt)]
    split = [(conversation[:i], [conversation[i]], None) for i in turns]
    if completion is None:  # a prompt-only row: its history's turns, then the open prompt itself
        return [*split, (prompt, None, teacher_prompt)]
    last_prompt, last_completion, _ = split[-1]
    return [*split[:-1], (last_prompt, last_completion, teacher_prompt)]


def has_system_message(*parts: Any) -> bool:
    return any(isinstance(p, list) and any(isinstance(m, dict) and m.get("role") == "system" for m in p) for p in parts)


def template_refusal(exc: Exception, *, has_system: bool, system_message: str) -> str:
    """One line for a jinja error the chat template raised on a row, with the way out."""
    message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    line = f"the student's chat template refused it ({message})"
    if has_system and system_message != "fold":
        return line + "; set system_message: fold to merge system messages into the next user turn"
    return (
        line
        + "; the row's roles must be ones the template accepts (for most: user first, then user and assistant alternating)"
    )
