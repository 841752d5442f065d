"""Text worker: transformers causal LMs behind /v1/chat/completions, /v1/completions and /v1/models.

This is how the appliance runs text on a box without a GPU, and how it serves small models next to
vLLM. `streaming` turns token ids into text deltas (stop strings, UTF-8 boundaries), `backend` owns the
model and the tokenizer, `routes` owns the OpenAI shapes and server-sent events.
"""
