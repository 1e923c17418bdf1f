"""Data formats, tokenisation, OPSD views and batch layout."""

from __future__ import annotations

import json

import pytest

from core_distill.data.batches import batch_indices, check_examples, encode_rows, make_batch
from core_distill.data.sources import DataError, read_rows
from tests.tiny_models import build_tokenizer

tokenizer = build_tokenizer()
LIMITS = dict(max_prompt_length=64, max_completion_length=64, source="test")


def test_messages_prompt_completion_and_prompt_only_rows():
    rows = [
        {"messages": [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"}], "teacher_prompt": "1+1=? it is 2"},
        {"prompt": [{"role": "user", "content": "1+1=?"}], "completion": [{"role": "assistant", "content": "2"}]},
        {"prompt": "1+1=", "completion": "2"},
        {"messages": [{"role": "user", "content": "1+1=?"}]},
    ]
    a, b, c, d = encode_rows(rows, tokenizer, **LIMITS)
    assert tokenizer.decode(a.prompt_ids) == "<|user|>1+1=?<|assistant|>"
    assert tokenizer.decode(a.completion_ids) == "2<|eos|>"
    assert tokenizer.decode(a.teacher_prompt_ids) == "<|user|>1+1=? it is 2<|assistant|>"
    assert (b.prompt_ids, b.completion_ids) == (a.prompt_ids, a.completion_ids)
    assert tokenizer.decode(c.completion_ids) == "2<|eos|>" and c.completion_text == "2"
    assert d.completion_ids is None and d.teacher_prompt_ids is None
    with pytest.raises(DataError, match="off-policy"):
        check_examples([a, d], needs_completions=True, needs_teacher_prompt=False, field="train_data")
    with pytest.raises(DataError, match="teacher_prompt"):
        check_examples([a, b], needs_completions=False, needs_teacher_prompt=True, field="train_data")


def test_long_prompts_keep_their_end():
    (e,) = encode_rows([{"prompt": "0123456789", "completion": "x"}], tokenizer, max_prompt_length=4, max_completion_length=8, source="t")
    assert tokenizer.decode(e.prompt_ids) == "6789"


def test_jsonl_parquet_and_datasets_folder_read_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for name in ("d.jsonl", "d.parquet", "ds"):
        assert read_rows(str(tmp_path / name)) == rows


def test_unreadable_data_names_the_file_and_row(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        read_rows(str(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="row 1"):
        encode_rows([{"text": "no prompt"}], tokenizer, **LIMITS)
    with pytest.raises(DataError, match="unknown data format"):
        (tmp_path / "x.csv").write_text("a,b\n")
        read_rows(str(tmp_path / "x.csv"))


def test_batch_layout_left_pads_prompts_and_right_pads_completions():
    batch = make_batch([[5, 6, 7], [8]], [[9], [10, 11]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 9, 0], [0, 0, 8, 10, 11]]
    assert batch.completion_mask.tolist() == [[True, False], [True, True]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]
    assert batch.n_tokens == 3


def test_data_order_is_a_pure_function_of_seed_and_position():
    first = batch_indices(10, 0, 25, seed=3)
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert batch_indices(10, 12, 5, seed=3) == first[12:17]
    assert batch_indices(10, 0, 10, seed=4) != first[:10]
