"""Typed Python client for Dowse (search, documents, jobs, embeddings, rerank, semantic cache).

Depends on httpx only. Framework adapters are optional extras, imported lazily:
``dowse_client.langchain`` (``pip install dowse-client[langchain]``) and ``dowse_client.llamaindex``
(``pip install dowse-client[llamaindex]``).
"""

from dowse_client._base import __version__
from dowse_client.aio import AsyncDowseClient
from dowse_client.client import DowseClient
from dowse_client.errors import (
    APIError,
    Conflict,
    DependencyFailed,
    DowseError,
    Forbidden,
    InvalidInput,
    MalformedRequest,
    NotFound,
    NotReady,
    Overloaded,
    ServerError,
    TooLarge,
    TransportError,
    Unauthorized,
)
from dowse_client.types import (
    CachedAnswer,
    CacheFeedback,
    CacheLookup,
    CacheStore,
    Collection,
    Document,
    Embeddings,
    Hit,
    Job,
    RerankResult,
    SearchResult,
    UpsertResult,
)

__all__ = [
    "APIError",
    "AsyncDowseClient",
    "CacheFeedback",
    "CacheLookup",
    "CacheStore",
    "CachedAnswer",
    "Collection",
    "Conflict",
    "DependencyFailed",
    "Document",
    "DowseClient",
    "DowseError",
    "Embeddings",
    "Forbidden",
    "Hit",
    "InvalidInput",
    "Job",
    "MalformedRequest",
    "NotFound",
    "NotReady",
    "Overloaded",
    "RerankResult",
    "SearchResult",
    "ServerError",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "UpsertResult",
    "__version__",
]
