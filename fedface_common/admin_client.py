"""A small typed client of the coordinator's admin API.

It imports nothing from `coordinator` or `storage`, so the admin commands work
from a device-only install (httpx + fedface_common). Responses are returned as
the JSON the server sent; failures raise `ApiProblem` built from the server's
RFC 9457 problem document."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from fedface_common.wire import API_PREFIX

ADMIN = f"{API_PREFIX}/admin"
UPLOAD_CHUNK = 1 << 20
JSON = dict[str, Any]


class ApiProblem(Exception):
    """A non-2xx answer (or no answer at all) from the coordinator."""

    def __init__(self, status: int | None, code: str, title: str, detail: str | None = None,
                 body: Any = None) -> None:
        super().__init__(f"{code}: {detail or title}")
        self.status, self.code, self.title, self.detail, self.body = status, code, title, detail, body

    @classmethod
    def from_response(cls, resp: httpx.Response) -> ApiProblem:
        try:
            body = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and "code" in body:
            detail = body.get("detail")
            if detail is None and body.get("errors"):
                # FastAPI validation errors carry their explanation in `errors`, not `detail`.
                detail = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg', '')}"
                                   for e in body["errors"])
            return cls(resp.status_code, str(body["code"]), str(body.get("title", "")), detail, body)
        text = resp.text[:500] if resp.content else None
        return cls(resp.status_code, f"http_{resp.status_code}", resp.reason_phrase or "HTTP error", text, body)


def _file_chunks(path: Path) -> Iterator[bytes]:
    # Models can be hundreds of MB: stream them instead of reading them whole.
    with path.open("rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            yield chunk


class AdminClient:
    def __init__(self, server: str, token: str, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(
            base_url=server.rstrip("/"), timeout=timeout_s, transport=transport,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "fedface-admin"},
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Plumbing -----------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiProblem(None, "connection_error", "Could not reach the coordinator",
                             f"{type(exc).__name__}: {exc} ({self._http.base_url})") from exc
        if resp.is_error:
            raise ApiProblem.from_response(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _upload(self, method: str, path: str, file: Path, params: Mapping[str, Any] | None = None) -> JSON:
        size = file.stat().st_size
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        result: JSON = self._json(method, path, content=_file_chunks(file), headers=headers,
                                  params={k: v for k, v in (params or {}).items() if v is not None})
        return result

    # Models ---------------------------------------------------------------------------
    def register_model(self, file: Path, note: str | None = None, serve: bool = False) -> JSON:
        return self._upload("POST", f"{ADMIN}/models", file,
                            {"note": note, "serve": "true" if serve else None})

    def attach_centres(self, version: int, file: Path) -> JSON:
        return self._upload("PUT", f"{ADMIN}/models/{version}/class-centres", file)

    def list_models(self) -> list[JSON]:
        result: list[JSON] = self._json("GET", f"{ADMIN}/models")
        return result

    def get_model(self, version: int) -> JSON:
        result: JSON = self._json("GET", f"{ADMIN}/models/{version}")
        return result

    def promote(self, version: int) -> JSON:
        result: JSON = self._json("POST", f"{ADMIN}/models/{version}/promote")
        return result

    def rollback(self) -> JSON:
        result: JSON = self._json("POST", f"{ADMIN}/models/rollback")
        return result

    def download_model(self, version: int, out: Path) -> int:
        """Stream the weights to `out` (written to a temp name, then renamed); returns bytes written."""
        tmp = out.with_name(out.name + ".part")
        try:
            with self._http.stream("GET", f"{ADMIN}/models/{version}/weights") as resp:
                if resp.is_error:
                    resp.read()
                    raise ApiProblem.from_response(resp)
                written = 0
                with tmp.open("wb") as f:
                    for chunk in resp.iter_bytes(UPLOAD_CHUNK):
                        f.write(chunk)
                        written += len(chunk)
            os.replace(tmp, out)
        except httpx.TransportError as exc:
            raise ApiProblem(None, "connection_error", "Could not reach the coordinator", str(exc)) from exc
        finally:
            tmp.unlink(missing_ok=True)
        return written

    # Rounds ---------------------------------------------------------------------------
    def start_round(self, config: Mapping[str, Any]) -> JSON:
        result: JSON = self._json("POST", f"{ADMIN}/rounds", json=dict(config))
        return result

    def list_rounds(self, limit: int = 100) -> list[JSON]:
        result: list[JSON] = self._json("GET", f"{ADMIN}/rounds", params={"limit": limit})
        return result

    def get_round(self, round_id: int) -> JSON:
        result: JSON = self._json("GET", f"{ADMIN}/rounds/{round_id}")
        return result

    def stop_round(self, round_id: int) -> JSON:
        result: JSON = self._json("POST", f"{ADMIN}/rounds/{round_id}/stop")
        return result

    def cancel_round(self, round_id: int) -> JSON:
        result: JSON = self._json("POST", f"{ADMIN}/rounds/{round_id}/cancel")
        return result

    def privacy(self, delta: float | None = None) -> JSON:
        params = {"delta": delta} if delta is not None else {}
        result: JSON = self._json("GET", f"{ADMIN}/privacy", params=params)
        return result

    # Enrollment, devices, audit ----------------------------------------------------------
    def issue_token(self, max_uses: int = 1, ttl_s: float = 24 * 3600, note: str | None = None) -> JSON:
        body: JSON = {"max_uses": max_uses, "ttl_s": ttl_s}
        if note is not None:
            body["note"] = note
        result: JSON = self._json("POST", f"{ADMIN}/enrollment-tokens", json=body)
        return result

    def list_tokens(self, limit: int = 100) -> list[JSON]:
        result: list[JSON] = self._json("GET", f"{ADMIN}/enrollment-tokens", params={"limit": limit})
        return result

    def revoke_token(self, token_id: str) -> JSON:
        result: JSON = self._json("POST", f"{ADMIN}/enrollment-tokens/{token_id}/revoke")
        return result

    def list_devices(self, include_revoked: bool = True) -> list[JSON]:
        result: list[JSON] = self._json("GET", f"{ADMIN}/devices",
                                        params={"include_revoked": str(include_revoked).lower()})
        return result

    def revoke_device(self, device_id: str) -> JSON:
        result: JSON = self._json("POST", f"{ADMIN}/devices/{device_id}/revoke")
        return result

    def audit(self, limit: int = 200) -> list[JSON]:
        result: list[JSON] = self._json("GET", f"{ADMIN}/audit", params={"limit": limit})
        return result

    # Blob store -------------------------------------------------------------------------
    def gc_blobs(self, dry_run: bool = False, timeout_s: float = 900.0) -> JSON:
        # A first pass over a large S3 bucket removes each object with its own requests: minutes, not seconds.
        result: JSON = self._json("POST", f"{ADMIN}/blobs/gc", params={"dry_run": str(dry_run).lower()},
                                  timeout=timeout_s)
        return result
