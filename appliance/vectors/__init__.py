"""Retrieval on the box: `/v1/files`, `/v1/vector_stores` and their search, over Chroma (embedded) or Milvus.

`api` speaks HTTP, `service` owns indexing and search, `backend` chooses and opens the vector database
(`chroma`, `milvus`: imported only when selected), and the pure cores `parsing`, `chunking`, `filters`
and `views` do the rest. Nothing here is imported by the daemon's start beyond `api` and `service`,
which import no vector database.
"""
