"""Whether a student and a teacher can be distilled token by token, and on which vocabulary.

Only token ids pass between the two models, so every id must name the same token on both sides:
the tokenizers are compared by their token -> id maps (added tokens included), never by size, and
by the special tokens that give the teacher's scores their meaning:

- bos: the student's prompts start with its bos; a teacher expecting another scores out of place;
- eos: the student's completions end with its eos, so it must be a token the teacher ends on (its
  eos, an eos of its generation config, or a special token its chat template writes). An instruct
  teacher over a base student passes (the base eos is among the instruct model's); a fine-tune whose
  eos was remapped to a token the teacher never ends on does not.
pad and unk are not compared: padded positions are never scored and the teacher never tokenizes text.

Heads are often padded beyond the tokenizer (Qwen2.5-7B's lm_head has 152,064 rows, the 0.5B's
151,936, their tokenizer 151,665 ids): the extra rows are never tokens. Heads of different sizes are
cut to the tokenizer's ids on both sides, which is exact: the softmax over real tokens is what both
models put on real tokens, renormalised over the ids text can produce. Equal heads are left whole.

This module reads tokenizers and plain numbers only (no torch), so the teacher server, the client
and the preflight share it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

HOW_TO_FIX = "token-level distillation needs the same token at every id: use a teacher with the student's tokenizer"


@dataclass(frozen=True)
class Vocabulary:
    """What the comparison needs of one model: its tokenizer's ids and special tokens, its head's rows."""

    fingerprint: str  # hash of the token -> id map (`vocab_fingerprint`, below)
    ids: int  # the tokenizer produces ids 0 .. ids - 1
    bos: str | None
    eos: str | None
    stops: tuple[str, ...]  # tokens the model ends on or writes as turn structure (sorted)
    head: int | None  # rows of the lm_head (None: not known)
    turn_end: str | None = None  # the token the chat template closes an assistant turn with (chat_turns)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        return cls(str(data["fingerprint"]), int(data["ids"]), data.get("bos"), data.get("eos"),
                   tuple(data.get("stops", ())), None if data.get("head") is None else int(data["head"]),
                   data.get("turn_end"))  # fmt: skip


def token_list(tokenizer) -> list[str | None]:
    """The token at each id, 0 .. max id (None where the tokenizer has no token at an id)."""
    vocab = tokenizer.get_vocab()
    tokens: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    return tokens


def id_count(tokenizer) -> int:
    """How many ids the tokenizer can produce (its largest id + 1: `len` undercounts a vocabulary with holes)."""
    return max(tokenizer.get_vocab().values(), default=-1) + 1


def vocabulary_of(tokenizer, *, head: int | None, generation_eos: int | Iterable[int] | None = None) -> Vocabulary:
    """The `Vocabulary` of a loaded tokenizer; `generation_eos` is the model's generation_config.eos_token_id."""
    tokens = token_list(tokenizer)
    eos_ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    stops = {tokens[i] for i in eos_ids if 0 <= i < len(tokens) and tokens[i] is not None}
    stops |= _template_tokens(tokenizer)
    if tokenizer.eos_token:
        stops.add(tokenizer.eos_token)
    from core_distill.data.chat_turns import end_of_turn_id

    turn_end = tokens[end_of_turn_id(tokenizer)] if tokenizer.chat_template else None
    return Vocabulary(vocab_fingerprint(tokenizer), len(tokens), tokenizer.bos_token, tokenizer.eos_token,
                      tuple(sorted(stops)), head, turn_end)  # fmt: skip


def _template_tokens(tokenizer) -> set[str]:
    """The special tokens the chat template writes literally (its turn markers, for most families)."""
    template = getattr(tokenizer, "chat_template", None)
    texts = list(template.values()) if isinstance(template, dict) else [template] if template else []
    special = set(tokenizer.all_special_tokens)
    special |= {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    return {token for token in special if any(token in text for text in texts)}


# --- the comparison ------------------------------------------------------------------------------------
def token_difference(student: list[str | None], teacher: list[str | None]) -> str | None:
    """'17 of 32,000 token ids differ, first: id 5 is ...'; None when every id names the same token."""
    total = max(len(student), len(teacher))
    pad = lambda tokens: tokens + [None] * (total - len(tokens))  # noqa: E731
    differing = [i for i, (s, t) in enumerate(zip(pad(student), pad(teacher), strict=True)) if s != t]
    if not differing:
        return None
    first = differing[0]
    shown = lambda tokens: repr(tokens[first]) if first < len(tokens) and tokens[first] is not None else "absent"  # noqa: E731
    sizes = (
        ""
        if len(student) == len(teacher)
        else f" (the student's tokenizer has {len(student):,} ids, the teacher's {len(teacher):,})"
    )
    return (
        f"the teacher's tokenizer differs from the student's: {len(differing):,} of {total:,} token ids differ{sizes}, "
        f"first: id {first} is {shown(student)} in the student, {shown(teacher)} in the teacher; {HOW_TO_FIX}"
    )


def special_difference(student: Vocabulary, teacher: Vocabulary) -> str | None:
    """What differs in the special tokens that matter (bos, the student's eos), with the way out; None if nothing."""
    if student.bos != teacher.bos:
        return (
            f"bos differs: {student.bos!r} in the student, {teacher.bos!r} in the teacher (same vocabulary): the "
            f"teacher would score prompts that do not start the way it was trained; {HOW_TO_FIX} and its special tokens"
        )
    # a chat student's completions end on its template's end of turn (chat_turns), often not its eos (base models)
    ends_on = student.eos if student.turn_end is None else student.turn_end
    if ends_on is not None and ends_on not in teacher.stops:
        ends = ", ".join(repr(t) for t in teacher.stops) or "none"
        return (
            f"eos differs: the student ends on {ends_on!r}, a token the teacher never ends on (its eos is "
            f"{teacher.eos!r}; tokens it ends on or writes in turns: {ends}), so the teacher would score every "
            f"completion's end as wrong; {HOW_TO_FIX} and its special tokens, or give the student one of those as eos"
        )
    return None


def shared_width(student_head: int | None, teacher_head: int | None, ids: int) -> tuple[int | None, str | None]:
    """(width both heads are cut to, or None for no cut; what makes a cut impossible, or None).

    Heads of equal size are left whole (nothing is mismatched). Heads of different sizes are cut to
    the tokenizer's `ids`, which needs both to cover them.
    """
    if student_head is None or teacher_head is None or student_head == teacher_head:
        return None, None
    for who, rows in (("student", student_head), ("teacher", teacher_head)):
        if rows < ids:
            return None, (
                f"the {who}'s lm_head has {rows:,} rows, fewer than the tokenizer's {ids:,} ids, and the "
                f"heads differ ({student_head:,} student, {teacher_head:,} teacher): ids {rows:,} and up could be "
                f"predicted by one model only, so no shared vocabulary covers the tokenizer"
            )
    return ids, None


def cut_line(student_head: int, teacher_head: int, width: int) -> str:
    """The run header's line for a cut."""
    return (
        f"vocabulary cut from {student_head:,} (student head) and {teacher_head:,} (teacher head) to {width:,} "
        f"(the tokenizer's ids; the rows beyond are padding, never tokens)"
    )


def mismatch(student: Vocabulary, teacher: Vocabulary, teacher_tokens: Callable[[], list[str | None]],
             student_tokens: Callable[[], list[str | None]]) -> str | None:  # fmt: skip
    """Why the pair cannot distil token by token (one line), or None. The token lists are asked for
    only when the fingerprints differ (a served teacher sends its list on request)."""
    different = student.fingerprint != teacher.fingerprint and token_difference(student_tokens(), teacher_tokens())
    return different or special_difference(student, teacher) or shared_width(student.head, teacher.head, student.ids)[1]


def vocab_fingerprint(tokenizer) -> str:
    """Hash of the token -> id mapping (added tokens included).

    Only ids travel between student and teacher, so the vocabularies agree exactly when every id
    names the same token string; the special tokens that matter are compared beside it (`mismatch`).
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()
    return f"vocab-sha256:{digest[:32]}"
