"""The agent's state directory: credential, model cache, private w_c, round journal.

Layout (default root `~/.fedface-agent/<host>-<port>`, one per server):
  credential.json        device id + credential, mode 0600
  blobs/<sha256>         downloaded models and class centres, verified by hash
  private_wc.safetensors the device's own class embedding (fedface-private), 0600
  journal.json           the round in progress / last submitted, for resuming
  pending.safetensors    a computed update not yet acknowledged by the server
  stats.json             timings of past rounds (deadline estimates)

Every write is atomic (temp file, fsync, rename), so a killed agent leaves
either the old file or the new one. Secrets and anything derived from the
user's face (w_c, updates) are created 0600 from the start (os.open mode),
never chmod-ed after the fact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from fedface_common import tensors

PRIVATE_MODE = 0o600
DIR_MODE = 0o700
_WC_TENSOR = "w_c"


class StateError(Exception):
    pass


def default_state_dir(server_url: str, home: Path | None = None) -> Path:
    """~/.fedface-agent/<host>-<port>: one identity per server, so two servers never share a credential."""
    parts = urlsplit(server_url if "://" in server_url else f"http://{server_url}")
    host = (parts.hostname or "localhost").replace(":", "_")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (home or Path.home()) / ".fedface-agent" / f"{host}-{port}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes, mode: int = PRIVATE_MODE) -> None:
    """Write via a temp file created with `mode`, fsync, rename, fsync the folder."""
    # Unique per writer: agents sharing a blob cache may write the same blob at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class Credential:
    device_id: str
    credential: str
    server: str


@dataclass
class Pending:
    """A trained update waiting for (or retrying) its submission."""

    round_id: int
    base_version: int
    num_samples: int
    sha256: str
    algorithm: str
    metrics: dict[str, Any]


class AgentState:
    def __init__(self, root: Path, blob_dir: Path | None = None) -> None:
        """blob_dir: a cache shared by several agents (a simulator's virtual devices); blobs
        are content-addressed and public to every selected device, so sharing leaks nothing."""
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        self.shared_blobs = blob_dir is not None
        self.blob_dir = Path(blob_dir) if blob_dir is not None else self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)

    # --- credential ------------------------------------------------------------------------
    @property
    def credential_path(self) -> Path:
        return self.root / "credential.json"

    def load_credential(self) -> Credential | None:
        try:
            raw = json.loads(self.credential_path.read_text())
            return Credential(str(raw["device_id"]), str(raw["credential"]), str(raw.get("server", "")))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StateError(f"{self.credential_path} is corrupt; delete it and enroll again") from exc

    def save_credential(self, cred: Credential) -> None:
        atomic_write(self.credential_path, json.dumps(asdict(cred)).encode())

    def forget_credential(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.credential_path.unlink()

    # --- blob cache (models, class centres) ------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StateError(f"not a sha256: {sha256!r}")
        return self.blob_dir / sha256

    def cached_blob(self, sha256: str) -> bytes | None:
        """The cached bytes if present and intact; a corrupt copy is deleted (and re-downloaded)."""
        path = self.blob_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if sha256_hex(data) != sha256:
            path.unlink(missing_ok=True)
            return None
        return data

    def store_blob(self, sha256: str, data: bytes) -> None:
        """Cache bytes under their hash; refuses bytes that do not hash to what the task announced."""
        actual = sha256_hex(data)
        if actual != sha256:
            raise StateError(f"downloaded blob hashes to {actual}, expected {sha256}")
        atomic_write(self.blob_path(sha256), data, 0o644)

    def prune_blobs(self, keep: set[str]) -> None:
        """Drop cached blobs other than `keep` (models are MBs; a phone keeps the current ones).
        A shared cache is left alone: other agents may still need what this one does not."""
        if self.shared_blobs:
            return
        for path in self.blob_dir.iterdir():
            if path.name not in keep and not path.name.startswith("."):
                path.unlink(missing_ok=True)

    # --- private class embedding -----------------------------------------------------------
    @property
    def private_wc_path(self) -> Path:
        return self.root / "private_wc.safetensors"

    def load_private_embedding(self) -> np.ndarray | None:
        try:
            arrays = tensors.decode(self.private_wc_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # unreadable: start afresh from the mean feature rather than fail the round
        return np.asarray(arrays[_WC_TENSOR], dtype=np.float32) if _WC_TENSOR in arrays else None

    def save_private_embedding(self, w_c: np.ndarray) -> None:
        atomic_write(self.private_wc_path, tensors.encode({_WC_TENSOR: np.asarray(w_c, dtype=np.float32)}))

    # --- journal ---------------------------------------------------------------------------
    @property
    def journal_path(self) -> Path:
        return self.root / "journal.json"

    @property
    def pending_path(self) -> Path:
        return self.root / "pending.safetensors"

    def _journal(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.journal_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _write_journal(self, journal: dict[str, Any]) -> None:
        atomic_write(self.journal_path, json.dumps(journal, sort_keys=True).encode())

    def save_pending(self, pending: Pending, body: bytes) -> None:
        """Keep a computed update on disk before sending it: the body first, then
        the journal entry that points at it (by hash), so a journal entry never
        names a body that is not fully written."""
        if sha256_hex(body) != pending.sha256:
            raise StateError("pending body does not match its hash")
        atomic_write(self.pending_path, body)
        journal = self._journal()
        journal["pending"] = asdict(pending)
        self._write_journal(journal)

    def pending(self) -> tuple[Pending, bytes] | None:
        entry = self._journal().get("pending")
        if not isinstance(entry, dict):
            return None
        try:
            pending = Pending(**entry)
            body = self.pending_path.read_bytes()
        except (TypeError, FileNotFoundError):
            self.clear_pending()
            return None
        if sha256_hex(body) != pending.sha256:  # torn or tampered: the update is lost, not sent wrong
            self.clear_pending()
            return None
        return pending, body

    def clear_pending(self) -> None:
        journal = self._journal()
        if journal.pop("pending", None) is not None:
            self._write_journal(journal)
        self.pending_path.unlink(missing_ok=True)

    def mark_submitted(self, round_id: int, update_id: int) -> None:
        """The server holds our update for round_id: never train that round again."""
        journal = self._journal()
        journal.pop("pending", None)
        journal["last_submitted"] = {"round_id": round_id, "update_id": update_id}
        self._write_journal(journal)
        self.pending_path.unlink(missing_ok=True)

    def last_submitted_round(self) -> int | None:
        entry = self._journal().get("last_submitted")
        return int(entry["round_id"]) if isinstance(entry, dict) and "round_id" in entry else None

    # --- timings ---------------------------------------------------------------------------
    @property
    def stats_path(self) -> Path:
        return self.root / "stats.json"

    def last_round_seconds(self) -> float | None:
        """Wall time of the previous round's work (training + upload), for the deadline estimate."""
        try:
            value = json.loads(self.stats_path.read_text()).get("round_seconds")
        except (FileNotFoundError, json.JSONDecodeError, AttributeError):
            return None
        return float(value) if isinstance(value, int | float) else None

    def record_round_seconds(self, seconds: float) -> None:
        atomic_write(self.stats_path, json.dumps({"round_seconds": seconds}).encode(), 0o644)


class SecAggJournal:
    """The device's SecAgg+ state for the round in progress (secagg.json, 0600: it holds private keys and
    the self-mask seed). Written before each stage message is sent, so that a killed agent resends the same
    message rather than a new one (fedface_common/secagg/device.py says why that matters)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / "secagg.json"

    def load(self, round_id: int) -> str | None:
        """The stored state's JSON, if it is this round's."""
        try:
            raw = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not isinstance(raw, dict) or raw.get("round_id") != round_id or not isinstance(raw.get("state"), str):
            return None
        return str(raw["state"])

    def save(self, round_id: int, state_json: str) -> None:
        atomic_write(self.path, json.dumps({"round_id": round_id, "state": state_json}).encode())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
