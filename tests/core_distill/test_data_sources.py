"""Case H (issue 21): datasets as users name them. A `save_to_disk` DatasetDict gives the split a spec names
(eval never silently the training split), and a hub dataset id loads from the datasets cache, laid out there
by `datasets` itself; offline, one that is not cached fails at once in one line."""

from __future__ import annotations

import time

import pytest

from core_distill.spec import SpecError
from core_distill.train import load_examples
from tests.tiny_models import build_tokenizer

tokenizer = build_tokenizer()
COMMIT = "0123abcd" * 5  # the cache keeps one folder per commit of the hub repository


def rows(split: str, n: int = 3) -> list[dict]:
    return [{"prompt": f"{split} {i}=", "completion": f"{split}{i}"} for i in range(n)]


def answers(examples) -> set[str]:
    return {e.completion_text for e in examples}


@pytest.fixture
def saved_dict(tmp_path):
    import datasets

    splits = {"train": rows("train"), "test": rows("test"), "validation": rows("validation")}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(tmp_path / "dd")
    return str(tmp_path / "dd")


def test_a_saved_dataset_dict_gives_train_for_training_and_test_for_evaluation(tiny_workspace, saved_dict):
    spec = tiny_workspace.spec(train_data=saved_dict, eval_data=saved_dict)
    spec.preflight()
    train, evals = load_examples(spec, tokenizer)
    assert answers(train) == {"train0", "train1", "train2"}
    assert answers(evals) == {"test0", "test1", "test2"}  # not the training rows


def test_named_splits_load_and_unknown_ones_are_refused_naming_the_field_and_the_splits(tiny_workspace, saved_dict):
    spec = tiny_workspace.spec(
        train_data=saved_dict, eval_data=saved_dict, train_split="validation", eval_split="train"
    )
    train, evals = load_examples(spec, tokenizer)
    assert answers(train) == {"validation0", "validation1", "validation2"} and answers(evals) == {
        "train0",
        "train1",
        "train2",
    }

    with pytest.raises(SpecError) as caught:
        tiny_workspace.spec(train_data=saved_dict, eval_data=saved_dict, eval_split="dev").preflight()
    assert caught.value.errors == {
        "eval_split": f"{saved_dict} has no split 'dev'; its splits are train, test, validation"
    }
    with pytest.raises(SpecError) as caught:  # the run's own loading says the same
        load_examples(tiny_workspace.spec(train_data=saved_dict, train_split="dev"), tokenizer)
    assert list(caught.value.errors) == ["train_split"] and "its splits are train, test, validation" in str(
        caught.value
    )


def test_a_split_named_for_a_file_and_an_eval_without_test_split_are_refused(tiny_workspace, tmp_path):
    import datasets

    with pytest.raises(SpecError) as caught:
        tiny_workspace.spec(train_split="train").preflight()
    assert caught.value.errors == {
        "train_split": f"'train' names a split, but {tiny_workspace.train_data} is one dataset without splits; leave it empty"
    }
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows("train"))}).save_to_disk(tmp_path / "only_train")
    with pytest.raises(SpecError) as caught:
        tiny_workspace.spec(eval_data=str(tmp_path / "only_train")).preflight()
    assert caught.value.errors == {
        "eval_split": f"{tmp_path / 'only_train'} has splits train and none is 'test' or 'validation': name one"
    }
    with pytest.raises(SpecError) as caught:
        tiny_workspace.spec(dataset_config="small").preflight()
    assert (
        list(caught.value.errors) == ["dataset_config"] and "hub dataset ids" in caught.value.errors["dataset_config"]
    )


def cache_hub_dataset(cache_dir, repo_id: str, config: str, splits: dict[str, list[dict]], tmp_path) -> None:
    """Prepare `repo_id` into a datasets cache with datasets' own Parquet builder, at the place a hub download
    of it writes to: <cache>/<org>___<name>/<config>/0.0.0/<commit>/ (its arrow files and dataset_info.json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {}
    for split, split_rows in splits.items():
        files[split] = str(tmp_path / f"{config}-{split}.parquet")
        pq.write_table(pa.Table.from_pylist(split_rows), files[split])
    org, name = repo_id.split("/")
    builder = Parquet(
        cache_dir=str(tmp_path / "scratch"), dataset_name=name, config_name=config, hash=COMMIT, data_files=files
    )
    builder.download_and_prepare(output_dir=str(cache_dir / f"{org}___{name}" / config / "0.0.0" / COMMIT))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An HF_HOME holding acme/tiny_chat (configs default and small) in its datasets cache; offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf_home" / "datasets"
    cache_hub_dataset(cache, "acme/tiny_chat", "default", {"train": rows("train"), "test": rows("test")}, tmp_path)
    cache_hub_dataset(
        cache, "acme/tiny_chat", "small", {"train": rows("small", 2), "validation": rows("val", 2)}, tmp_path
    )
    return cache


def test_a_cached_hub_dataset_loads_offline_with_its_config_split_and_commit(tiny_workspace, hub_cache):
    spec = tiny_workspace.spec(train_data="acme/tiny_chat", eval_data="acme/tiny_chat", dataset_config="default")
    spec.preflight()
    train, evals = load_examples(spec, tokenizer)
    assert answers(train) == {"train0", "train1", "train2"} and answers(evals) == {"test0", "test1", "test2"}

    small = spec.with_overrides({"dataset_config": "small", "dataset_revision": COMMIT[:10]})
    small.preflight()
    train, evals = load_examples(small, tokenizer)
    assert answers(train) == {"small0", "small1"} and answers(evals) == {"val0", "val1"}


def test_hub_dataset_mistakes_are_one_line_each_naming_the_field(tiny_workspace, hub_cache):
    cases = [  # (fields, the field named, what its message says)
        (
            dict(dataset_config=""),
            "dataset_config",
            "several configurations of 'acme/tiny_chat' (default, small); name one",
        ),
        (dict(dataset_config="small", dataset_revision="feedbeef"), "dataset_revision", f"(it holds {COMMIT[:12]})"),
        (dict(dataset_config="small", dataset_revision="v1.0"), "dataset_revision", "is a branch or tag"),
        (
            dict(dataset_config="small", eval_split="test"),
            "eval_split",
            "has no split 'test'; its splits are train, validation",
        ),
        (dict(dataset_config="large"), "dataset_config", "holds no configuration 'large'"),
    ]
    for fields, field, says in cases:
        with pytest.raises(SpecError) as caught:
            tiny_workspace.spec(train_data="acme/tiny_chat", eval_data="acme/tiny_chat", **fields).preflight()
        assert list(caught.value.errors) == [field], (fields, caught.value.errors)
        assert says in caught.value.errors[field] and "\n" not in caught.value.errors[field]


def test_an_uncached_hub_dataset_offline_fails_in_seconds_in_one_line(tiny_workspace, hub_cache):
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:
        tiny_workspace.spec(train_data="acme/not_cached").preflight()
    assert time.monotonic() - started < 10
    message = caught.value.errors["train_data"]
    assert message.startswith(
        f"hub dataset 'acme/not_cached' is not in the datasets cache ({hub_cache}) and HF_HUB_OFFLINE is set"
    )
    assert "\n" not in message
    with pytest.raises(SpecError) as caught:  # the run's loader, past the preflight, says the same
        load_examples(tiny_workspace.spec(train_data="acme/not_cached"), tokenizer)
    assert caught.value.errors["train_data"] == message
