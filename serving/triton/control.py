"""Triton repository control channels: the same five calls over HTTP or gRPC (gRPC keeps repository loads off
the HTTP inference threads; see serving.triton.backend)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import tritonclient.http as httpclient

GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


class Control(Protocol):
    """Repository control and model state: what load/unload/loaded_versions need from the server."""

    def index(self) -> list[dict[str, Any]]: ...
    def load(self, model: str, config: str | None) -> None: ...
    def unload(self, model: str) -> None: ...
    def config(self, model: str) -> dict[str, Any]: ...
    def ready(self, model: str, version: str) -> bool: ...
    def close(self) -> None: ...


class HttpControl:
    """Over the KServe HTTP API, with the calling thread's HTTP client."""

    def __init__(self, client: Callable[[], httpclient.InferenceServerClient], headers: dict | None) -> None:
        self._client, self._headers = client, headers

    def index(self) -> list[dict[str, Any]]:
        return self._client().get_model_repository_index(headers=self._headers)

    def load(self, model: str, config: str | None) -> None:
        self._client().load_model(model, headers=self._headers, config=config)

    def unload(self, model: str) -> None:
        self._client().unload_model(model, headers=self._headers)

    def config(self, model: str) -> dict[str, Any]:
        return dict(self._client().get_model_config(model))

    def ready(self, model: str, version: str) -> bool:
        return self._client().is_model_ready(model, version)

    def close(self) -> None:
        """The HTTP clients are closed by the backend."""


class GrpcControl:
    """Over gRPC (one thread-safe channel); JSON answers use protobuf-JSON (int64 as strings)."""

    def __init__(self, url: str, headers: dict | None, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient  # needs grpcio

        self._client = grpcclient.InferenceServerClient(url.split("://", 1)[-1])
        # Triton 2.51 expects a restricted gRPC protocol's header under this prefix (verified).
        self._headers = {GRPC_HEADER_PREFIX + k: v for k, v in headers.items()} if headers else None
        self._timeout = timeout_s

    def index(self) -> list[dict[str, Any]]:
        answer = self._client.get_model_repository_index(
            headers=self._headers, as_json=True, client_timeout=self._timeout
        )
        return answer.get("models", [])

    def load(self, model: str, config: str | None) -> None:
        self._client.load_model(model, headers=self._headers, config=config, client_timeout=self._timeout)

    def unload(self, model: str) -> None:
        self._client.unload_model(model, headers=self._headers, client_timeout=self._timeout)

    def config(self, model: str) -> dict[str, Any]:
        return self._client.get_model_config(model, headers=self._headers, as_json=True, client_timeout=self._timeout)[
            "config"
        ]

    def ready(self, model: str, version: str) -> bool:
        return self._client.is_model_ready(model, version, headers=self._headers, client_timeout=self._timeout)

    def close(self) -> None:
        self._client.close()
