"""Retrieval on the box: `/v1/files`, `/v1/vector_stores` and their search, over Chroma (embedded) or Milvus.

`api` speaks HTTP, `service` owns indexing and search, `embedder` embeds through the gateway's own
route, `backend` chooses and opens the vector database (`chroma`, `milvus`: imported only when a vector
route first needs one), `tokens` finds the embedding model's tokenizer that chunk sizes count in, and the
pure cores `parsing`, `chunking`, `filters` and `views` do the rest.
The daemon's start imports no vector database client and no PDF reader.
"""
