"""The teacher server: payload bytes per token (binary vs JSON) and throughput with 1 and 4 clients.

    python benchmarks/bench_teacher_server.py                 # about 3 minutes on a 2-core VM
    python benchmarks/bench_teacher_server.py --seconds 5     # shorter throughput windows

Models are built locally (random weights, saved with save_pretrained) and served by
`distill teacher serve` in a subprocess on this machine:
    throughput teacher: Llama-shaped, hidden 512, 4 layers, MLP 1376, vocabulary 32,000 (~82M parameters)
    bytes-only teacher: hidden 64, 1 layer, vocabulary 151,936 (ids need 4 bytes instead of 2)
A request holds 4 sequences of a 64-token prompt and a 64-token completion (256 scored tokens).
Payload bytes are per scored (completion) token: the binary body the server sends, against the
same arrays as nested JSON lists (TRL's JSON mode), and the request body against JSON id lists.
Throughput: each client sends such requests back to back for `--seconds`; scored tokens per second
over all clients, and how many requests each forward pass served on average (/stats).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core_distill.teachers.protocol import ScoreRequest  # noqa: E402
from core_distill.teachers.remote import TeacherClient  # noqa: E402

PROMPT, COMPLETION, ROWS = 64, 64, 4


def build_teacher(path: Path, *, vocab: int, hidden: int, layers: int) -> None:
    """Random Llama weights and a word-level tokenizer with `vocab` tokens (only its fingerprint matters)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 16 * 16,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=1, pad_token_id=0)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    backend = Tokenizer(models.WordLevel({f"<t{i}>": i for i in range(vocab)}, unk_token="<t0>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<t0>", eos_token="<t1>").save_pretrained(path)


class Server:
    def __init__(self, model: Path, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "teacher", "serve", str(model), "--port", str(port),
                                      "--max-top-k", "128"], cwd=REPO, env=env, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(log.read_text())
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.5)
        raise RuntimeError("server did not start")

    def stats(self) -> dict:
        return httpx.get(self.url + "/stats").json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def make_request(client: TeacherClient, vocab: int, top_k: int, seed: int) -> ScoreRequest:
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(2, vocab, PROMPT + COMPLETION) for _ in range(ROWS)]
    return ScoreRequest.from_sequences(sequences, [PROMPT] * ROWS, top_k=top_k, temperature=1.0,
                                       fingerprint=client.info()["fingerprint"])  # fmt: skip


def payload_rows(server: Server, vocab: int) -> list[str]:
    client = TeacherClient(server.url)
    rows = []
    for top_k in (1, 8, 20, 64, 128):
        request = make_request(client, vocab, top_k, seed=top_k)
        body = request.encode()
        response = client.score(request)
        n = request.n_scored
        binary = response.encode()
        as_json = response.to_json().encode()
        request_json = json.dumps({"sequences": [s.tolist() for s in np.split(request.tokens, np.cumsum(request.lengths)[:-1])],
                                   "prompt_lengths": request.prompt_lengths.tolist(), "top_k": top_k}).encode()  # fmt: skip
        rows.append(f"| {vocab:,} | {top_k} | {len(binary) / n:,.1f} | {len(as_json) / n:,.1f} | "
                    f"{len(as_json) / len(binary):.1f}x | {len(body) / n:.1f} | {len(request_json) / n:.1f} |")  # fmt: skip
    client.close()
    return rows


def throughput(server: Server, vocab: int, clients: int, seconds: float, top_k: int = 20) -> dict[str, float]:
    scored = [0] * clients
    stop = time.monotonic() + seconds
    before = server.stats()

    def loop(i: int) -> None:
        client = TeacherClient(server.url)
        request = make_request(client, vocab, top_k, seed=100 + i)
        while time.monotonic() < stop:
            client.score(request)
            scored[i] += request.n_scored
        client.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    after = server.stats()
    batches = after["forward_batches"] - before["forward_batches"]
    return {"tokens_per_s": sum(scored) / elapsed, "requests_per_forward": (after["requests"] - before["requests"]) / max(batches, 1),
            "load": os.getloadavg()[0]}


def in_process(model: Path, seconds: float, top_k: int = 20) -> dict[str, float]:
    """The same requests scored in this process (no HTTP, no queue): what the server's overhead is measured against."""
    from app.teacher_server import ServedTeacher

    teacher = ServedTeacher.load(str(model), device="cpu")
    rng = np.random.default_rng(100)
    request = ScoreRequest.from_sequences([rng.integers(2, 32_000, PROMPT + COMPLETION) for _ in range(ROWS)],
                                          [PROMPT] * ROWS, top_k=top_k, temperature=1.0, fingerprint=teacher.fingerprint)  # fmt: skip
    teacher.score_many([request], 16384)  # warm-up
    scored, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        teacher.score_many([request], 16384)
        scored += request.n_scored
    return {"tokens_per_s": scored / (time.monotonic() - started), "requests_per_forward": 1.0, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each throughput window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_teacher(root / "teacher-32k", vocab=32_000, hidden=512, layers=4)
        build_teacher(root / "teacher-152k", vocab=151_936, hidden=64, layers=1)
        print("## payload bytes per scored token\n")
        print("| vocabulary | top_k | binary response | JSON response | JSON / binary | binary request | JSON request |")
        print("|---|---|---|---|---|---|---|")
        for name, vocab, port in (("teacher-152k", 151_936, 18652), ("teacher-32k", 32_000, 18651)):
            server = Server(root / name, port, root / f"{name}.log")
            try:
                for row in payload_rows(server, vocab):
                    print(row, flush=True)
                if vocab == 32_000:
                    throughput(server, vocab, 1, 3.0)  # warm-up
                    results = {n: throughput(server, vocab, n, args.seconds) for n in (1, 4)}
            finally:
                server.stop()
        results["in-process"] = in_process(root / "teacher-32k", args.seconds)
        print(f"\n## throughput (vocabulary 32,000, top_k 20, {ROWS} x ({PROMPT} + {COMPLETION}) tokens per request)\n")
        print("| clients | scored tokens / s | requests per forward pass | load avg |")  # in-process: no server
        print("|---|---|---|---|")
        for n, r in results.items():
            print(f"| {n} | {r['tokens_per_s']:,.0f} | {r['requests_per_forward']:.2f} | {r['load']:.2f} |")


if __name__ == "__main__":
    main()
