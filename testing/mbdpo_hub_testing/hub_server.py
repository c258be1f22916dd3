"""A small local Hugging Face Hub for tests and air-gapped use.

It implements the part of the Hub HTTP API that ``huggingface_hub`` (2.x), ``transformers`` and ``datasets`` use
to create repos, upload (regular + basic LFS), branch/tag, inspect and download models and datasets. Xet is not
implemented: clients must run with ``HF_HUB_DISABLE_XET=1``.

Storage (``--root DIR``) is a simple content-addressed commit model::

    DIR/blobs/<sha256[:2]>/<sha256>                 file contents (shared by all repos)
    DIR/repos/<type>s/<namespace>/<name>/repo.json  repo metadata (id, type, private, createdAt)
    DIR/repos/<type>s/<namespace>/<name>/refs.json  {"branches": {name: sha}, "tags": {name: sha}}
    DIR/repos/<type>s/<namespace>/<name>/commits/<sha>.json
                                                    one snapshot manifest per commit: path -> blob sha256

Every write goes to a temporary file and is renamed into place; a commit becomes visible only when ``refs.json``
is replaced, which is the last step. A commit interrupted midway (server error, client dying mid-upload, process
killed) therefore leaves the previous revision intact. A single process should own a root (writes are serialised
with an in-process lock plus an ``fcntl`` lock file where available).

Usage::

    python -m mbdpo_hub_testing.hub_server --port 0 --root /tmp/hub     # prints the URL

    from mbdpo_hub_testing.hub_server import start_local_hub
    with start_local_hub("/tmp/hub") as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

try:  # POSIX only; on other platforms the in-process lock is all we have.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["HubError", "HubStore", "LocalHub", "start_local_hub", "main"]

REPO_TYPES = ("model", "dataset", "space")
_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_DEFAULT_USER = "tester"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Files above this size are always LFS (huggingface_hub assumes "regular" files are <= 5 MB).
_LFS_SIZE_THRESHOLD = 5 * 1024 * 1024
_LFS_EXTENSIONS = (
    ".7z .arrow .bin .bz2 .ckpt .ftz .gz .h5 .joblib .mlmodel .model .msgpack .npy .npz .onnx .ot .parquet .pb .pickle "
    ".pkl .pt .pth .rar .safetensors .tar .tflite .tgz .wasm .xz .zip .zst .png .jpg .jpeg .gif .mp4 .webm .avi .mp3 "
    ".wav .flac .ogg .tfevents .lance"
).split()
_GITATTRIBUTES = "".join(
    f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in _LFS_EXTENSIONS
) + "*tfevents* filter=lfs diff=lfs merge=lfs -text\n"
_CHUNK = 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------------
# Errors and small helpers
# ---------------------------------------------------------------------------------------------------------------------
class HubError(Exception):
    """An error answered to the client as a Hub-style JSON error (``X-Error-Code`` header + ``{"error": msg}``)."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra or {}


class _ClientGone(Exception):
    """The client closed the connection before sending its whole request body."""


class _InjectedFault(Exception):
    """Raised by a fault injected with :meth:`LocalHub.inject_commit_failure`."""


def _now_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _is_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut at the end of the 512-byte sample is still text.
        return e.start < len(sample) - 4
    return False


def _should_be_lfs(path: str, size: int, sample: bytes) -> bool:
    if size == 0:
        return False
    lower = path.lower()
    return size > _LFS_SIZE_THRESHOLD or lower.endswith(tuple(_LFS_EXTENSIONS)) or _is_binary(sample)


_FSYNC = {"enabled": False}  # set by HubStore(fsync=True): also survive power loss, not only process death


def _fsync_dir(path: Path) -> None:
    if not _FSYNC["enabled"] or os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if _FSYNC["enabled"]:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def _validate_path_in_repo(path: str) -> str:
    if not isinstance(path, str) or not path:
        raise HubError(400, "Invalid path in repo: empty path")
    path = path.lstrip("/")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git" or "\\" in path or "\x00" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _parse_card_data(readme: bytes) -> dict | None:
    """Parse the YAML front matter of a README.md (``None`` when there is none or it is invalid)."""
    text = readme.decode("utf-8", errors="replace")
    m = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
    if not m:
        return None
    try:
        import yaml

        data = yaml.safe_load(m.group(1))
    except Exception:
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class _Repo:
    type: str
    id: str
    dir: Path

    @property
    def refs_path(self) -> Path:
        return self.dir / "refs.json"

    def commit_path(self, sha: str) -> Path:
        return self.dir / "commits" / f"{sha}.json"


@dataclass
class _Faults:
    commit_stage: str | None = None  # "after_blobs" | "after_commit_object"


class HubStore:
    """On-disk repos, commits, refs and blobs. Thread-safe within one process."""

    def __init__(self, root: str | os.PathLike, fsync: bool = False):
        if fsync:
            _FSYNC["enabled"] = True
        self.root = Path(root).resolve()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._lockfile = self.root / ".lock"
        self._lockfile.touch(exist_ok=True)
        self.faults = _Faults()

    # -- locking -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        with self._lock:
            if fcntl is None:
                yield
                return
            with open(self._lockfile, "r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

    # -- blobs ---------------------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return _SHA256_RE.match(sha256 or "") is not None and self.blob_path(sha256).is_file()

    def put_blob_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            _atomic_write_bytes(self.blob_path(sha), data)
        return sha

    def put_blob_stream(self, chunks: Iterator[bytes], expected_sha256: str | None = None) -> tuple[str, int]:
        """Stream chunks to a temp file, verify the hash, then rename into the blob store."""
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                if _FSYNC["enabled"]:
                    f.flush()
                    os.fsync(f.fileno())
            sha = h.hexdigest()
            if expected_sha256 is not None and sha != expected_sha256:
                raise HubError(400, f"Uploaded content does not match its oid: expected {expected_sha256}, got {sha}")
            dest = self.blob_path(sha)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
            return sha, size
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    # -- repos ---------------------------------------------------------------------------------------------------
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        ns, name = repo_id.split("/")
        return self.root / "repos" / f"{repo_type}s" / ns / name

    def check_repo_id(self, repo_id: str) -> str:
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts) or any(p.endswith(".git") for p in parts):
            raise HubError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name' ([A-Za-z0-9._-], max 96)")
        return repo_id

    def get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        try:
            self.check_repo_id(repo_id)
        except HubError:
            raise HubError(404, f"Repository Not Found: {repo_type} {repo_id}", "RepoNotFound") from None
        d = self._repo_dir(repo_type, repo_id)
        if not (d / "repo.json").is_file() or not (d / "refs.json").is_file():
            raise HubError(404, f"Repository Not Found: {repo_type} {repo_id}", "RepoNotFound")
        return _Repo(repo_type, repo_id, d)

    def repo_meta(self, repo: _Repo) -> dict:
        return json.loads((repo.dir / "repo.json").read_text())

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> tuple[_Repo, bool]:
        """Create a repo with an initial commit holding ``.gitattributes``. Returns (repo, created)."""
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        self.check_repo_id(repo_id)
        with self.write_lock():
            with contextlib.suppress(HubError):
                return self.get_repo(repo_type, repo_id), False
            final = self._repo_dir(repo_type, repo_id)
            staging = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix="repo-"))
            try:
                repo = _Repo(repo_type, repo_id, staging)
                (staging / "commits").mkdir()
                _atomic_write_json(
                    staging / "repo.json",
                    {"id": repo_id, "type": repo_type, "private": bool(private), "createdAt": _now_iso()},
                )
                ga = _GITATTRIBUTES.encode()
                sha = self.put_blob_bytes(ga)
                files = {".gitattributes": {"sha256": sha, "size": len(ga), "oid": _git_blob_sha1(ga), "lfs": False}}
                commit = self._new_commit_obj([], files, "initial commit", "")
                _atomic_write_json(repo.commit_path(commit["id"]), commit)
                _atomic_write_json(staging / "refs.json", {"branches": {"main": commit["id"]}, "tags": {}})
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():  # leftover of a broken repo (no refs.json): replace it
                    self._trash(final)
                os.replace(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return _Repo(repo_type, repo_id, final), True

    def _trash(self, path: Path) -> None:
        trash = self.root / "tmp" / f"trash-{uuid.uuid4().hex}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.write_lock():
            repo = self.get_repo(repo_type, repo_id)
            self._trash(repo.dir)

    def move_repo(self, repo_type: str, from_id: str, to_id: str) -> None:
        self.check_repo_id(to_id)
        with self.write_lock():
            repo = self.get_repo(repo_type, from_id)
            dest = self._repo_dir(repo_type, to_id)
            if dest.exists():
                raise HubError(409, f"Repository {to_id} already exists")
            meta = self.repo_meta(repo)
            meta["id"] = to_id
            _atomic_write_json(repo.dir / "repo.json", meta)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(repo.dir, dest)

    def set_private(self, repo: _Repo, private: bool) -> None:
        with self.write_lock():
            meta = self.repo_meta(repo)
            meta["private"] = bool(private)
            _atomic_write_json(repo.dir / "repo.json", meta)

    # -- refs and commits ----------------------------------------------------------------------------------------
    def refs(self, repo: _Repo) -> dict:
        return json.loads(repo.refs_path.read_text())

    def commit(self, repo: _Repo, sha: str) -> dict:
        return json.loads(repo.commit_path(sha).read_text())

    def resolve(self, repo: _Repo, revision: str | None) -> str:
        """Branch, tag, ``refs/heads/x``, ``refs/tags/x`` or full commit sha -> commit sha."""
        rev = revision or "main"
        refs = self.refs(repo)
        if rev.startswith("refs/heads/"):
            hit = refs["branches"].get(rev[len("refs/heads/") :])
        elif rev.startswith("refs/tags/"):
            hit = refs["tags"].get(rev[len("refs/tags/") :])
        else:
            hit = refs["branches"].get(rev) or refs["tags"].get(rev)
        if hit:
            return hit
        if _SHA1_RE.match(rev) and repo.commit_path(rev).is_file():
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _new_commit_obj(self, parents: list[str], files: dict, title: str, message: str) -> dict:
        date = _now_iso()
        payload = json.dumps([parents, files, title, message, date, uuid.uuid4().hex], sort_keys=True)
        sha = hashlib.sha1(payload.encode()).hexdigest()
        return {
            "id": sha,
            "parents": parents,
            "title": title,
            "message": message,
            "date": date,
            "authors": [_DEFAULT_USER],
            "files": files,
        }

    def apply_commit(
        self,
        repo: _Repo,
        branch: str,
        operations: list[tuple[str, dict]],
        title: str,
        message: str,
        parent_commit: str | None = None,
    ) -> str:
        """Apply NDJSON commit operations to ``branch``; the branch moves only if everything succeeded."""
        refs = self.refs(repo)
        if branch.startswith("refs/heads/"):
            branch = branch[len("refs/heads/") :]
        if branch not in refs["branches"]:
            if branch in refs["tags"] or _SHA1_RE.match(branch):
                raise HubError(400, f"Cannot commit to {branch!r}: commits must target a branch")
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")

        # 1. Store file contents (blobs) outside the lock: content-addressed, so this is idempotent.
        staged: list[tuple[str, str, dict | None]] = []  # (kind, path, entry)
        for key, value in operations:
            if key == "file":
                path = _validate_path_in_repo(value.get("path", ""))
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                try:
                    data = base64.b64decode(value.get("content", ""), validate=True)
                except Exception:
                    raise HubError(400, f"Invalid base64 content for {path}") from None
                sha = self.put_blob_bytes(data)
                entry = {"sha256": sha, "size": len(data), "oid": _git_blob_sha1(data), "lfs": False}
                staged.append(("add", path, entry))
            elif key == "lfsFile":
                path = _validate_path_in_repo(value.get("path", ""))
                oid = value.get("oid", "")
                if value.get("algo", "sha256") != "sha256" or not self.has_blob(oid):
                    raise HubError(
                        422, f"LFS object {oid} for {path} was not uploaded (upload it via the LFS batch API first)"
                    )
                size = self.blob_path(oid).stat().st_size
                if value.get("size") is not None and int(value["size"]) != size:
                    raise HubError(422, f"LFS object {oid} for {path} has size {size}, not {value['size']}")
                pointer = _lfs_pointer(oid, size)
                staged.append(("add", path, {"sha256": oid, "size": size, "oid": _git_blob_sha1(pointer), "lfs": True}))
            elif key == "deletedFile":
                staged.append(("del", _validate_path_in_repo(value.get("path", "")), None))
            elif key == "deletedFolder":
                staged.append(("delfolder", _validate_path_in_repo(value.get("path", "").rstrip("/")), None))
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")

        if self.faults.commit_stage == "after_blobs":
            self.faults.commit_stage = None
            raise _InjectedFault("injected failure after storing blobs")

        with self.write_lock():
            refs = self.refs(repo)
            head = refs["branches"].get(branch)
            if head is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent_commit is not None and parent_commit != head:
                raise HubError(412, f"A commit has happened since {parent_commit}. Please refresh and try again.")
            files = dict(self.commit(repo, head)["files"])
            for kind, path, entry in staged:
                if kind == "add":
                    if any(p.startswith(path + "/") for p in files):
                        raise HubError(400, f"Cannot add file {path!r}: a folder with that name exists")
                    files[path] = entry
                elif kind == "del":
                    files.pop(path, None)
                else:
                    for p in [p for p in files if p == path or p.startswith(path + "/")]:
                        del files[p]
            commit = self._new_commit_obj([head], files, title, message)
            # 2. Write the commit object (invisible until a ref points to it).
            _atomic_write_json(repo.commit_path(commit["id"]), commit)
            if self.faults.commit_stage == "after_commit_object":
                self.faults.commit_stage = None
                raise _InjectedFault("injected failure after writing the commit object")
            # 3. Publish: a single atomic rename of refs.json.
            refs["branches"][branch] = commit["id"]
            _atomic_write_json(repo.refs_path, refs)
            return commit["id"]

    def create_branch(self, repo: _Repo, branch: str, starting_point: str | None) -> None:
        _check_ref_name(branch)
        with self.write_lock():
            refs = self.refs(repo)
            if branch in refs["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            refs["branches"][branch] = self.resolve(repo, starting_point or "main")
            _atomic_write_json(repo.refs_path, refs)

    def delete_branch(self, repo: _Repo, branch: str) -> None:
        with self.write_lock():
            refs = self.refs(repo)
            if branch not in refs["branches"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the main branch")
            del refs["branches"][branch]
            _atomic_write_json(repo.refs_path, refs)

    def create_tag(self, repo: _Repo, tag: str, revision: str | None) -> None:
        _check_ref_name(tag)
        with self.write_lock():
            refs = self.refs(repo)
            if tag in refs["tags"]:
                raise HubError(409, f"Tag already exists: {tag}")
            refs["tags"][tag] = self.resolve(repo, revision or "main")
            _atomic_write_json(repo.refs_path, refs)

    def delete_tag(self, repo: _Repo, tag: str) -> None:
        with self.write_lock():
            refs = self.refs(repo)
            if tag not in refs["tags"]:
                raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
            del refs["tags"][tag]
            _atomic_write_json(repo.refs_path, refs)

    def history(self, repo: _Repo, sha: str) -> list[dict]:
        out = []
        seen = set()
        while sha and sha not in seen:
            seen.add(sha)
            c = self.commit(repo, sha)
            out.append(c)
            sha = c["parents"][0] if c["parents"] else None
        return out

    def last_commit_for(self, repo: _Repo, sha: str, path: str) -> dict:
        """The most recent commit (from ``sha`` backwards) that changed ``path`` (file or folder prefix)."""

        def view(c: dict) -> dict:
            return {p: e["sha256"] for p, e in c["files"].items() if p == path or p.startswith(path + "/")}

        hist = self.history(repo, sha)
        current = view(hist[0])
        last = hist[0]
        for c in hist[1:]:
            if view(c) != current:
                break
            last = c
        return {"id": last["id"], "title": last["title"], "date": last["date"]}


def _check_ref_name(name: str) -> None:
    if (
        not name
        or name.startswith(("/", "-", "refs/"))
        or name.endswith(("/", ".lock", "."))
        or ".." in name
        or any(c in name for c in " ~^:?*[\\\x00")
        or _SHA1_RE.match(name)
    ):
        raise HubError(400, f"Invalid reference name {name!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Listings
# ---------------------------------------------------------------------------------------------------------------------
def _tree_sha(entries: dict) -> str:
    return hashlib.sha1(json.dumps(sorted((p, e["oid"]) for p, e in entries.items())).encode()).hexdigest()


def _file_entry(store: HubStore, repo: _Repo, sha: str, path: str, e: dict, expand: bool) -> dict:
    out: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
    if e.get("lfs"):
        out["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": len(_lfs_pointer(e["sha256"], e["size"]))}
    if expand:
        out["lastCommit"] = store.last_commit_for(repo, sha, path)
    return out


def _dir_entry(store: HubStore, repo: _Repo, sha: str, files: dict, path: str, expand: bool) -> dict:
    sub = {p: e for p, e in files.items() if p.startswith(path + "/")}
    out: dict[str, Any] = {"type": "directory", "oid": _tree_sha(sub), "size": 0, "path": path}
    if expand:
        out["lastCommit"] = store.last_commit_for(repo, sha, path)
    return out


def _list_tree(store: HubStore, repo: _Repo, sha: str, prefix: str, recursive: bool, expand: bool) -> list[dict]:
    files = store.commit(repo, sha)["files"]
    prefix = prefix.strip("/")
    if prefix and prefix in files:
        return [_file_entry(store, repo, sha, prefix, files[prefix], expand)]
    base = prefix + "/" if prefix else ""
    under = sorted(p for p in files if p.startswith(base))
    if prefix and not under:
        raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound")
    dirs: set[str] = set()
    out_files = []
    for p in under:
        rest = p[len(base) :]
        parts = rest.split("/")
        if len(parts) == 1:
            out_files.append(p)
        elif recursive:
            for i in range(1, len(parts)):
                dirs.add(base + "/".join(parts[:i]))
            out_files.append(p)
        else:
            dirs.add(base + parts[0])
    entries = [_dir_entry(store, repo, sha, files, d, expand) for d in sorted(dirs)]
    entries += [_file_entry(store, repo, sha, p, files[p], expand) for p in out_files]
    entries.sort(key=lambda e: e["path"])
    return entries


# ---------------------------------------------------------------------------------------------------------------------
# HTTP layer
# ---------------------------------------------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, store: HubStore, quiet: bool = True):
        super().__init__(addr, handler)
        self.store = store
        self.quiet = quiet
        host, port = self.server_address[:2]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        self.request_log: list[tuple[str, str, int]] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "mbdpo-local-hub/1.0"

    # -- plumbing ------------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if not self.server.quiet:
            super().log_message(format, *args)

    @property
    def store(self) -> HubStore:
        return self.server.store

    def _iter_body(self) -> Iterator[bytes]:
        """Yield the request body (Content-Length or chunked). Raises _ClientGone on a truncated body."""
        if getattr(self, "_body_consumed", False):
            return
        self._body_consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise _ClientGone()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, _CHUNK))
                    if not chunk:
                        raise _ClientGone()
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline(3)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, _CHUNK))
                if not chunk:
                    raise _ClientGone()
                remaining -= len(chunk)
                yield chunk

    def _body(self) -> bytes:
        return b"".join(self._iter_body())

    def _drain(self) -> None:
        with contextlib.suppress(Exception):
            for _ in self._iter_body():
                pass

    def _json_body(self) -> Any:
        raw = self._body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise HubError(400, "Request body is not valid JSON") from None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, obj: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({**err.extra, "error": err.message}, err.status, headers)

    def _dispatch(self) -> None:
        self._body_consumed = False
        status = 500
        try:
            split = urlsplit(self.path)
            self.query = parse_qs(split.query, keep_blank_values=True)
            self._route([s for s in split.path.split("/") if s != ""])
            status = 200
        except HubError as e:
            status = e.status
            self._drain()
            self._send_error(e)
        except _ClientGone:
            status = 499
            self.close_connection = True
        except _InjectedFault as e:
            status = 500
            self._drain()
            self._send_error(HubError(500, f"Internal Error: {e}"))
        except (BrokenPipeError, ConnectionResetError):
            status = 499
            self.close_connection = True
        except Exception as e:  # pragma: no cover - bugs surface to the client as 500s with the message
            import traceback

            traceback.print_exc(file=sys.stderr)
            self._drain()
            with contextlib.suppress(Exception):
                self._send_error(HubError(500, f"Internal Error: {type(e).__name__}: {e}"))
        finally:
            self.server.request_log.append((self.command, self.path, status))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    # -- routing -------------------------------------------------------------------------------------------------
    def _route(self, seg: list[str]) -> None:
        m = self.command
        if seg[:1] == ["api"]:
            return self._route_api(seg[1:])
        if seg[:1] == ["lfs-upload"] and len(seg) == 2 and m == "PUT":
            return self._lfs_upload(seg[1])
        if seg[:1] == ["lfs-upload"] and len(seg) == 2 and m in ("GET", "HEAD"):
            return self._lfs_download(seg[1])
        # /[datasets/|spaces/]ns/name.git/info/lfs/objects/batch
        repo_type = "model"
        rest = seg
        if seg and seg[0] in ("datasets", "spaces"):
            repo_type, rest = seg[0][:-1], seg[1:]
        if len(rest) >= 2 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]:
            if m != "POST":
                raise HubError(405, "Method not allowed")
            return self._lfs_batch(repo_type, f"{rest[0]}/{rest[1][:-4]}")
        if len(rest) >= 4 and rest[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{rest[0]}/{rest[1]}", rest[3:])
        raise HubError(404, f"Not found: {m} {urlsplit(self.path).path}")

    def _route_api(self, seg: list[str]) -> None:
        m = self.command
        if seg == ["whoami-v2"] and m == "GET":
            return self._send_json(
                {
                    "type": "user",
                    "id": "0" * 24,
                    "name": _DEFAULT_USER,
                    "fullname": "Local Hub Tester",
                    "isPro": False,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
                }
            )
        if seg == ["validate-yaml"] and m == "POST":
            return self._validate_yaml()
        if seg[:1] == ["telemetry"]:
            self._drain()
            return self._send_json({})
        if seg[:1] == ["repos"] and len(seg) == 2:
            return self._repos_op(seg[1])
        if seg and seg[0] in ("models", "datasets", "spaces") and len(seg) >= 3:
            repo_type = seg[0][:-1]
            repo_id = f"{unquote(seg[1])}/{unquote(seg[2])}"
            rest = seg[3:]
            return self._repo_api(repo_type, repo_id, rest)
        raise HubError(404, f"Not found: {m} /api/{'/'.join(seg)}")

    # -- /api/repos/* ----------------------------------------------------------------------------------------------
    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.server.url}/{_TYPE_PREFIX[repo_type]}{repo_id}"

    def _repos_op(self, op: str) -> None:
        body = self._json_body()
        repo_type = body.get("type") or "model"
        if op == "create" and self.command == "POST":
            name = body.get("name")
            if not name:
                raise HubError(400, "Missing repo name")
            repo_id = f"{body.get('organization') or _DEFAULT_USER}/{name}"
            private = body.get("private") or body.get("visibility") == "private"
            _, created = self.store.create_repo(repo_type, repo_id, private=bool(private))
            url = self._repo_url(repo_type, repo_id)
            if not created:
                # The real Hub answers 409 with the url in the body; create_repo(exist_ok=True) reads it.
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            return self._send_json({"url": url, "name": repo_id, "id": repo_id})
        if op == "delete" and self.command == "DELETE":
            repo_id = f"{body.get('organization') or _DEFAULT_USER}/{body.get('name')}"
            self.store.delete_repo(repo_type, repo_id)
            return self._send_json({})
        if op == "move" and self.command == "POST":
            self.store.move_repo(repo_type, body.get("fromRepo", ""), body.get("toRepo", ""))
            return self._send_json({})
        raise HubError(404, f"Not found: {self.command} /api/repos/{op}")

    def _validate_yaml(self) -> None:
        body = self._json_body()
        content = body.get("content", "")
        if _parse_card_data(content.encode()) is None and content.lstrip().startswith("---"):
            raise HubError(400, "Invalid metadata in README.md: YAML front matter could not be parsed")
        return self._send_json({"errors": [], "warnings": []})

    # -- /api/{type}s/{ns}/{name}/... ------------------------------------------------------------------------------
    def _split_rev(self, repo, parts: list[str]) -> tuple[str, str, list[str]]:
        """Split ``<rev>/<path...>`` where an unquoted revision may itself contain '/'. Returns (rev, sha, rest)."""
        if not parts:
            return "main", self.store.resolve(repo, "main"), []
        first = unquote(parts[0])
        try:
            return first, self.store.resolve(repo, first), parts[1:]
        except HubError as err:
            for k in range(2, len(parts) + 1):
                cand = "/".join(unquote(p) for p in parts[:k])
                with contextlib.suppress(HubError):
                    return cand, self.store.resolve(repo, cand), parts[k:]
            raise err

    def _repo_api(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
        m = self.command
        store = self.store
        if not rest and m == "GET":
            repo = store.get_repo(repo_type, repo_id)
            return self._send_json(self._info(repo, store.resolve(repo, "main")))
        repo = store.get_repo(repo_type, repo_id)
        op, args = rest[0], rest[1:]
        if op in ("xet-write-token", "xet-read-token"):
            raise HubError(501, "Xet storage is not supported by the local hub: set HF_HUB_DISABLE_XET=1")
        if op == "revision" and m == "GET":
            if not args:
                raise HubError(400, "Missing revision")
            _, sha, _ = self._split_rev(repo, args)
            return self._send_json(self._info(repo, sha))
        if op == "refs" and m == "GET":
            refs = store.refs(repo)

            def lst(kind: str, d: dict) -> list[dict]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in sorted(d.items())]

            out = {"branches": lst("heads", refs["branches"]), "tags": lst("tags", refs["tags"]), "converts": []}
            if self.query.get("include_prs"):
                out["pullRequests"] = []
            return self._send_json(out)
        if op == "tree" and m == "GET":
            _, sha, path_parts = self._split_rev(repo, args)
            path = "/".join(unquote(p) for p in path_parts)
            recursive = self.query.get("recursive", ["False"])[0].lower() in ("1", "true")
            expand = self.query.get("expand", ["False"])[0].lower() in ("1", "true")
            return self._send_json(_list_tree(store, repo, sha, path, recursive, expand))
        if op == "paths-info" and m == "POST":
            _, sha, _ = self._split_rev(repo, args)
            return self._paths_info(repo, sha)
        if op == "commits" and m == "GET":
            _, sha, _ = self._split_rev(repo, args)
            hist = [
                {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                 "authors": [{"user": a} for a in c.get("authors", [])]}
                for c in store.history(repo, sha)
            ]
            return self._send_json(hist)
        if op == "preupload" and m == "POST":
            return self._preupload(repo, args)
        if op == "commit" and m == "POST":
            return self._commit(repo, args)
        if op == "branch" and args and m in ("POST", "DELETE"):
            branch = "/".join(unquote(a) for a in args)
            if m == "POST":
                body = self._json_body()
                store.create_branch(repo, branch, body.get("startingPoint"))
            else:
                self._drain()
                store.delete_branch(repo, branch)
            return self._send_json({})
        if op == "tag" and args and m in ("POST", "DELETE"):
            name = "/".join(unquote(a) for a in args)
            if m == "POST":
                body = self._json_body()
                if not body.get("tag"):
                    raise HubError(400, "Missing 'tag' in request body")
                store.create_tag(repo, body["tag"], name)
            else:
                self._drain()
                store.delete_tag(repo, name)
            return self._send_json({})
        if op == "settings" and m == "PUT":
            body = self._json_body()
            if "private" in body or "visibility" in body:
                store.set_private(repo, bool(body.get("private")) or body.get("visibility") == "private")
            return self._send_json({})
        raise HubError(404, f"Not found: {m} {urlsplit(self.path).path}")

    def _info(self, repo: _Repo, sha: str) -> dict:
        meta = self.store.repo_meta(repo)
        commit = self.store.commit(repo, sha)
        files = commit["files"]
        card = None
        if "README.md" in files:
            card = _parse_card_data(self.store.read_blob(files["README.md"]["sha256"]))
        siblings = []
        for p in sorted(files):
            e = files[p]
            s: dict[str, Any] = {"rfilename": p, "size": e["size"], "blobId": e["oid"]}
            if e.get("lfs"):
                pointer_size = len(_lfs_pointer(e["sha256"], e["size"]))
                s["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": pointer_size}
            siblings.append(s)
        tags = list(card.get("tags") or []) if card else []
        if not isinstance(tags, list):
            tags = [str(tags)]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.type}/{repo.id}".encode()).hexdigest()[:24],
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": meta.get("createdAt"),
            "private": bool(meta.get("private")),
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "usedStorage": sum(e["size"] for e in files.values()),
        }
        if card is not None:
            info["cardData"] = card
        if repo.type == "model":
            info["modelId"] = repo.id
            if card:
                for k in ("library_name", "pipeline_tag"):
                    if card.get(k):
                        info[k] = card[k]
                if card.get("model-index"):
                    info["model-index"] = card["model-index"]
            if "config.json" in files:
                with contextlib.suppress(Exception):
                    cfg = json.loads(self.store.read_blob(files["config.json"]["sha256"]))
                    if isinstance(cfg, dict):
                        info["config"] = {k: cfg[k] for k in ("architectures", "model_type") if k in cfg}
        elif repo.type == "dataset" and card and card.get("description"):
            info["description"] = card["description"]
        return info

    def _paths_info(self, repo: _Repo, sha: str) -> None:
        raw = self._body()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            body = json.loads(raw or b"{}")
            paths = body.get("paths", [])
            expand = bool(body.get("expand"))
        else:
            form = parse_qs(raw.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["False"])[0].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        files = self.store.commit(repo, sha)["files"]
        out = []
        for p in paths:
            p = p.strip("/")
            if p in files:
                out.append(_file_entry(self.store, repo, sha, p, files[p], expand))
            elif p and any(f.startswith(p + "/") for f in files):
                out.append(_dir_entry(self.store, repo, sha, files, p, expand))
        self._send_json(out)

    def _preupload(self, repo: _Repo, args: list[str]) -> None:
        body = self._json_body()
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests (create_pr=True) are not supported by the local hub")
        rev = "/".join(unquote(a) for a in args) or "main"
        try:
            files = self.store.commit(repo, self.store.resolve(repo, rev))["files"]
        except HubError:
            files = {}
        out = []
        for f in body.get("files", []):
            path = f.get("path", "")
            try:
                sample = base64.b64decode(f.get("sample", ""))
            except Exception:
                raise HubError(400, f"Invalid base64 sample for {path}") from None
            lfs = _should_be_lfs(path, int(f.get("size") or 0), sample)
            existing = files.get(path.lstrip("/"))
            oid = None
            if existing is not None:
                oid = existing["sha256"] if existing.get("lfs") else existing["oid"]
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send_json({"files": out, "commitOid": None})

    def _commit(self, repo: _Repo, args: list[str]) -> None:
        if self.query.get("create_pr"):
            self._drain()
            raise HubError(400, "Pull requests (create_pr=True) are not supported by the local hub")
        branch = "/".join(unquote(a) for a in args) or "main"
        # Read the whole NDJSON body first: a truncated upload (client died) raises _ClientGone => nothing changes.
        raw = self._body()
        header: dict = {}
        ops: list[tuple[str, dict]] = []
        for i, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise HubError(400, f"Malformed commit payload (line {i + 1})") from None
            if key == "header":
                header = value
            else:
                ops.append((key, value))
        if not header.get("summary"):
            raise HubError(400, "Missing commit summary (commit message)")
        sha = self.store.apply_commit(
            repo, branch, ops, header["summary"], header.get("description") or "", header.get("parentCommit")
        )
        self._send_json(
            {
                "commitUrl": f"{self._repo_url(repo.type, repo.id)}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
                "success": True,
            }
        )

    # -- LFS -----------------------------------------------------------------------------------------------------
    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        body = self._json_body()
        self.store.get_repo(repo_type, repo_id)
        if body.get("operation") not in ("upload", "download"):
            raise HubError(400, f"Unsupported LFS operation {body.get('operation')!r}")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid", ""), obj.get("size")
            entry: dict[str, Any] = {"oid": oid, "size": size}
            if not _SHA256_RE.match(oid or "") or not isinstance(size, int):
                entry["error"] = {"code": 422, "message": "Invalid oid or size"}
                entry["oid"], entry["size"] = str(oid), size if isinstance(size, int) else 0
            elif body["operation"] == "download":
                if self.store.has_blob(oid):
                    entry["actions"] = {"download": {"href": f"{self.server.url}/lfs-upload/{oid}"}}
                else:
                    entry["error"] = {"code": 404, "message": "Object does not exist"}
            elif not self.store.has_blob(oid):
                entry["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{oid}"}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   ctype="application/vnd.git-lfs+json")

    def _lfs_upload(self, oid: str) -> None:
        if not _SHA256_RE.match(oid):
            raise HubError(400, f"Invalid LFS oid {oid!r}")
        self.store.put_blob_stream(self._iter_body(), expected_sha256=oid)
        self._send(200, b"", ctype="text/plain")

    def _lfs_download(self, oid: str) -> None:
        self._drain()
        if not self.store.has_blob(oid):
            raise HubError(404, f"LFS object {oid} not found", "EntryNotFound")
        data = self.store.read_blob(oid)
        self._send(200, data, {"ETag": f'"{oid}"'}, ctype="application/octet-stream")

    # -- downloads -----------------------------------------------------------------------------------------------
    def _resolve(self, repo_type: str, repo_id: str, parts: list[str]) -> None:
        self._drain()
        repo = self.store.get_repo(repo_type, repo_id)
        _, sha, path_parts = self._split_rev(repo, parts)
        path = "/".join(unquote(p) for p in path_parts)
        files = self.store.commit(repo, sha)["files"]
        entry = files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        size = entry["size"]
        etag = entry["sha256"] if entry.get("lfs") else entry["oid"]
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Cache-Control": "no-cache",
        }
        if entry.get("lfs"):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(size)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            mm = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not mm or (mm.group(1) == "" and mm.group(2) == ""):
                raise HubError(416, f"Invalid Range header {rng!r}")
            if mm.group(1) == "":
                start, end = max(0, size - int(mm.group(2))), size - 1
            else:
                start = int(mm.group(1))
                end = min(int(mm.group(2)), size - 1) if mm.group(2) else size - 1
            if start >= size and size > 0 or start > end + 1:
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"}, ctype="text/plain")
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        with open(self.store.blob_path(entry["sha256"]), "rb") as f:
            f.seek(start)
            remaining = length
            while remaining:
                chunk = f.read(min(remaining, _CHUNK))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------
class LocalHub:
    """A running local Hub (background thread). Use as a context manager or call :meth:`stop`."""

    def __init__(
        self, root: str | os.PathLike, port: int = 0, host: str = "127.0.0.1", quiet: bool = True, fsync: bool = False
    ):
        self.root = Path(root)
        self.store = HubStore(root, fsync=fsync)
        self._server = _Server((host, port), _Handler, self.store, quiet=quiet)
        self.url: str = self._server.url
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"local-hub:{self.port}", daemon=True)
        self._thread.start()

    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request served so far (handy for debugging tests)."""
        return self._server.request_log

    def inject_commit_failure(self, stage: str = "after_blobs") -> None:
        """Make the next commit fail with a 500 midway: ``"after_blobs"`` (contents stored, no commit object yet) or
        ``"after_commit_object"`` (commit object written, branch not moved). The previous revision stays intact."""
        if stage not in ("after_blobs", "after_commit_object"):
            raise ValueError(f"Unknown stage {stage!r}; expected 'after_blobs' or 'after_commit_object'")
        self.store.faults.commit_stage = stage

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "LocalHub":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalHub(url={self.url!r}, root={str(self.root)!r})"


def start_local_hub(
    root: str | os.PathLike, port: int = 0, host: str = "127.0.0.1", quiet: bool = True, fsync: bool = False
) -> LocalHub:
    """Start a local Hub serving repos stored under ``root`` in a background thread (``port=0``: pick a free one).

    ``quiet=False`` logs every request to stderr; ``fsync=True`` fsyncs every write (durable across power loss,
    slower; atomicity against crashes holds either way)."""
    return LocalHub(root, port=port, host=host, quiet=quiet, fsync=fsync)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mbdpo_hub_testing.hub_server",
        description="Serve a local Hugging Face Hub (models + datasets) for tests and air-gapped use. "
        "Clients: HF_ENDPOINT=<printed url> HF_HUB_DISABLE_XET=1 HF_TOKEN=<anything>.",
    )
    parser.add_argument("--root", required=True, help="directory holding the repos (created if missing)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = pick a free port)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("--fsync", action="store_true", help="fsync every write (durable across power loss)")
    args = parser.parse_args(argv)
    store = HubStore(args.root, fsync=args.fsync)
    try:
        server = _Server((args.host, args.port), _Handler, store, quiet=not args.verbose)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    print(server.url, flush=True)
    print(f"Local hub serving {store.root} at {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
