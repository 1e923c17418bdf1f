"""Which rows a spec's train_data / eval_data name, and which split of them.

- a JSONL / JSON / Parquet file: its rows (a file has no splits);
- a folder saved with `save_to_disk`: a Dataset, or one split of a DatasetDict (`train_split`, `eval_split`);
- a hub dataset id ('org/name'): `datasets.load_dataset` with `dataset_config` and `dataset_revision`,
  through the datasets cache. Offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set, or a hub that does not
  answer one TCP connect) only the cache is read, the way `datasets` itself reads it offline, and a dataset
  that is not there fails at once with one line.

Split defaults: train_split '' = 'train', or the only split; eval_split '' = 'test', else 'validation'.
The eval rows are never the training split unless a spec names it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core_distill.paths import DATA_SUFFIXES, hub_reachable, is_hub_dataset, resolve_data_path

SPLIT_FIELDS = {"train_data": "train_split", "eval_data": "eval_split"}
DEFAULT_SPLITS = {"train_split": ("train",), "eval_split": ("test", "validation")}
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


class DataError(ValueError):
    """Bad data; the message names the file, the row and the problem."""


class FieldDataError(DataError):
    """A data problem that a spec field other than the data field fixes (a split, a config, a revision)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class NotCachedError(FieldDataError):
    """The datasets cache does not hold what a hub dataset request names."""


@dataclass(frozen=True)
class DataRequest:
    """One data field of a spec: the name, and the split, config and revision that go with it."""

    name: str
    field: str = "train_data"
    split: str = ""
    config: str = ""
    revision: str = ""

    @property
    def split_field(self) -> str:
        return SPLIT_FIELDS.get(self.field, "train_split")


def request_for(spec: Any, field: str) -> DataRequest:
    """The request of `field` ('train_data' or 'eval_data') of a DistillSpec."""
    return DataRequest(getattr(spec, field), field, getattr(spec, SPLIT_FIELDS[field]), spec.dataset_config,
                       spec.dataset_revision)  # fmt: skip


def choose_split(available: list[str], request: DataRequest, where: str) -> str:
    """The split of a multi-split dataset that `request` means, or a one-line error naming the split field."""
    field = request.split_field
    if request.split:
        if request.split in available:
            return request.split
        raise FieldDataError(field, f"{where} has no split {request.split!r}; its splits are {', '.join(available)}")
    defaults = DEFAULT_SPLITS[field]
    for name in defaults:
        if name in available:
            return name
    if field == "train_split" and len(available) == 1:
        return available[0]
    wanted = " or ".join(repr(d) for d in defaults)
    raise FieldDataError(field, f"{where} has splits {', '.join(available)} and none is {wanted}: name one")


def refuse_split(request: DataRequest, where: str) -> None:
    """A file or a single saved Dataset has no splits: a split named for it is a mistake, not ignored."""
    if request.split:
        raise FieldDataError(
            request.split_field,
            f"{request.split!r} names a split, but {where} is one dataset without splits; leave it empty",
        )


def open_saved_folder(path: Path, request: DataRequest):
    """The Dataset in a `save_to_disk` folder: the folder's own, or the requested split of a DatasetDict."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(path))
    if hasattr(dataset, "keys"):  # a DatasetDict
        return dataset[choose_split(list(dataset.keys()), request, str(path))]
    refuse_split(request, str(path))
    return dataset


# --- reading rows ---------------------------------------------------------------------------------
def read_rows(source: str | DataRequest) -> list[dict[str, Any]]:
    """Rows of a JSONL/JSON/Parquet file, a saved `datasets` folder or a hub dataset (one split of it)."""
    request = DataRequest(source) if isinstance(source, str) else source
    if is_hub_dataset(request.name):
        return list(open_hub_dataset(request))
    path = resolve_data_path(request.name)
    if not path.exists():
        raise DataError(f"no data at {request.name!r} (resolved to {path})")
    if path.is_dir():
        return list(open_saved_folder(path, request))
    refuse_split(request, str(path))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        return _json_rows(path)
    raise DataError(
        f"{path}: unknown data format {path.suffix!r} (use {', '.join(DATA_SUFFIXES)} or a datasets folder)"
    )


def _json_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


# --- hub datasets ---------------------------------------------------------------------------------
def datasets_offline() -> str:
    """Why only the cache may be read ('' when the hub may be asked): the environment as it is now
    (`datasets` reads it once, at import)."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in _TRUE:
            return f"{variable} is set"
    return "" if hub_reachable() else "the Hugging Face hub is unreachable"


def datasets_cache_dir() -> Path:
    """Where `datasets` keeps prepared datasets: $HF_DATASETS_CACHE, else $HF_HOME/datasets, else its default."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "datasets"
    import datasets.config

    return Path(datasets.config.HF_DATASETS_CACHE)


def open_hub_dataset(request: DataRequest, *, download: bool = True):
    """The requested split of the hub dataset `request.name`, or None when `download` is off, the hub is
    online and the cache does not hold it (the preflight then only asks the hub whether it exists).

    Raises:
        DataError: one line naming the field: not cached offline, no such dataset, config or split.
    """
    offline = datasets_offline()
    try:
        return _from_cache(request, offline)
    except NotCachedError:
        if offline:
            raise
    if download:
        return _download(request)
    problem = _hub_dataset_problem(request)
    if problem:
        raise DataError(f"{request.field}: {problem}")
    return None


def _cache_root(name: str) -> Path:
    from datasets.naming import camelcase_to_snakecase

    namespace, dataset = name.split("/")
    return datasets_cache_dir() / f"{namespace}___{camelcase_to_snakecase(dataset)}"


def _from_cache(request: DataRequest, offline: str):
    """The prepared dataset as `datasets` caches a hub download: <cache>/<org>___<name>/<config>/<version>/<commit>/."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.cache.cache import Cache

    name, cache = request.name, datasets_cache_dir()
    why = f" and {offline}" if offline else ""
    # prepared versions only: a download in progress writes <commit>.incomplete/ and renames it when done
    prepared = [p for p in _cache_root(name).glob("*/*/*") if (p / "dataset_info.json").is_file()]
    versions = sorted(prepared, key=lambda p: p.stat().st_mtime)
    if not versions:
        raise NotCachedError(request.field, f"hub dataset {name!r} is not in the datasets cache ({cache}){why}: load it "
                             "once online, point HF_HOME or HF_DATASETS_CACHE at the cache that holds it, or name a local file")  # fmt: skip
    configs = sorted({p.parts[-3] for p in versions})
    config = request.config or (configs[0] if len(configs) == 1 else "")
    if not config:
        raise NotCachedError("dataset_config", f"the datasets cache holds several configurations of {name!r} "
                             f"({', '.join(configs)}); name one")  # fmt: skip
    versions = [p for p in versions if p.parts[-3] == config]
    if not versions:
        raise NotCachedError("dataset_config", f"the datasets cache holds no configuration {config!r} of {name!r}{why} "
                             f"(it holds {', '.join(configs)})")  # fmt: skip
    versions = _at_revision(versions, request, why)
    version, commit = versions[-1].parts[-2:]
    builder = Cache(cache_dir=str(cache), repo_id=name, dataset_name=camelcase_to_snakecase(name.split("/")[1]),
                    config_name=config, version=version, hash=commit)  # fmt: skip
    split = choose_split(list(builder.info.splits or {}), request, repr(name))
    return builder.as_dataset(split=split)


def _at_revision(versions: list[Path], request: DataRequest, why: str) -> list[Path]:
    """The cached versions of a commit (the cache keeps one folder per commit); all of them for no revision."""
    revision = request.revision
    if revision in ("", "main"):
        return versions
    commits = ", ".join(p.name[:12] for p in versions)
    if not _COMMIT.match(revision):
        raise NotCachedError("dataset_revision", f"{revision!r} is a branch or tag, which the datasets cache does not "
                             f"record (it keeps commits: {commits}){why}; name the commit")  # fmt: skip
    matching = [p for p in versions if p.name.startswith(revision)]
    if not matching:
        raise NotCachedError("dataset_revision", f"commit {revision!r} of {request.name!r} is not in the datasets cache"
                             f"{why} (it holds {commits})")  # fmt: skip
    return matching


def _download(request: DataRequest):
    """`datasets.load_dataset` from the hub (into the datasets cache), then the requested split."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        loaded = datasets.load_dataset(request.name, request.config or None, revision=request.revision or None,
                                       cache_dir=str(datasets_cache_dir()))  # fmt: skip
    except DatasetNotFoundError as exc:
        raise DataError(f"{request.field}: {str(exc).splitlines()[0]}") from None
    except (ConnectionError, OSError, ValueError) as exc:  # no such config, the hub gave up, a bad revision
        raise DataError(
            f"{request.field}: cannot load hub dataset {request.name!r}: {str(exc).splitlines()[0][:300]}"
        ) from None
    return loaded[choose_split(list(loaded.keys()), request, repr(request.name))]


HUB_TIMEOUT = 4.0


def _hub_dataset_problem(request: DataRequest) -> str | None:
    """One request to the hub: None if the dataset (at the revision) exists, else what is wrong."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).dataset_info(
            request.name, revision=request.revision or None, timeout=HUB_TIMEOUT
        )
    except GatedRepoError:
        return None  # it exists; the worker's token decides
    except RevisionNotFoundError:
        return f"hub dataset {request.name!r} has no revision {request.revision!r}"
    except RepositoryNotFoundError:
        return f"no dataset {request.name!r} on the Hugging Face hub (and it is not a local file or folder)"
    except Exception as exc:  # noqa: BLE001  (httpx, OSError, HTTP errors: all mean "cannot reach it")
        return f"hub dataset {request.name!r} is not cached and the hub did not answer ({type(exc).__name__})"
    return None
