"""Where the teacher's distribution comes from.

base.py (the interface, batch_rows) <- local.py (a model in this process), remote.py (a `distill teacher
serve` server, over protocol.py's wire format), vllm.py (a vLLM server), cache.py (top-K log-probs on
disk) <- factory.py (`build_teacher`: the one a spec asks for). The factory imports the backends; no
backend imports the factory.
"""
