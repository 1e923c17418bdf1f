"""Student rollouts: sampling.py (HF `generate`, and the sampler a spec asks for), vllm.py (an in-process
vLLM engine), both stopping where stops.py says.
"""
