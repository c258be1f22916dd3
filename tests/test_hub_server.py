"""The local Hub (mbdpo_hub_testing.hub_server) exercised through the real huggingface_hub / transformers / datasets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest
import torch
from torch import nn

import huggingface_hub
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import PreTrainedConfig, PreTrainedModel

from mbdpo_hub_testing import hf_env, start_local_hub

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- tiny transformers model
class TinyHubConfig(PreTrainedConfig):
    model_type = "tiny_hub_test"

    def __init__(self, hidden: int = 4, **kwargs):
        self.hidden = hidden
        super().__init__(**kwargs)


class TinyHubModel(PreTrainedModel):
    config_class = TinyHubConfig
    base_model_prefix = "tiny"

    def __init__(self, config: TinyHubConfig):
        super().__init__(config)
        self.lin = nn.Linear(config.hidden, config.hidden)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.lin(x)


def _tiny(hidden: int = 3, seed: int = 0) -> TinyHubModel:
    torch.manual_seed(seed)
    return TinyHubModel(TinyHubConfig(hidden=hidden))


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


# --------------------------------------------------------------------------------------------- basic repo + upload
def test_fixture_points_libraries_at_local_hub(local_hub):
    assert constants.ENDPOINT == local_hub.url
    assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(local_hub.url + "/")
    assert constants.HF_HUB_DISABLE_XET is True and constants.HF_HUB_OFFLINE is False
    assert Path(constants.HF_HUB_CACHE).is_relative_to(local_hub.hf_home)
    assert os.environ["HF_ENDPOINT"] == local_hub.url
    assert os.environ["HF_HUB_DISABLE_XET"] == "1" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert os.environ["HF_TOKEN"]
    assert huggingface_hub.hf_api.api.endpoint == local_hub.url
    import datasets

    assert datasets.config.HF_ENDPOINT == local_hub.url
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(local_hub.hf_home)
    assert HfApi().whoami()["name"]


def test_create_repo_upload_and_download(local_hub, tmp_path):
    api = HfApi()
    url = api.create_repo("org/model-a")
    assert url.repo_id == "org/model-a"
    assert api.create_repo("org/model-a", exist_ok=True).repo_id == "org/model-a"
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("org/model-a")
    assert e.value.response.status_code == 409
    assert api.create_repo("org/data-a", repo_type="dataset").repo_type == "dataset"

    folder = tmp_path / "up"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("hello hub\n")
    (folder / "sub" / "cfg.json").write_text('{"a": 1}')
    weights = os.urandom(4096)
    (folder / "weights.safetensors").write_bytes(weights)  # binary => LFS upload through the batch API
    info = api.upload_folder(repo_id="org/model-a", folder_path=folder, commit_message="add files")
    one = api.upload_file(path_or_fileobj=b"single", path_in_repo="one.bin", repo_id="org/model-a")

    files = api.list_repo_files("org/model-a")
    assert sorted(files) == [".gitattributes", "notes.txt", "one.bin", "sub/cfg.json", "weights.safetensors"]
    tree = {e.path: e for e in api.list_repo_tree("org/model-a", recursive=True)}
    assert tree["weights.safetensors"].lfs is not None and tree["weights.safetensors"].size == 4096
    assert tree["notes.txt"].lfs is None
    assert type(tree["sub"]).__name__ == "RepoFolder"
    top = [e.path for e in api.list_repo_tree("org/model-a")]
    assert "sub/cfg.json" not in top and "sub" in top

    mi = api.model_info("org/model-a", files_metadata=True)
    assert mi.sha == one.oid != info.oid
    assert {s.rfilename for s in mi.siblings} == set(files)
    assert api.repo_info("org/model-a").sha == one.oid

    assert _read(hf_hub_download("org/model-a", "weights.safetensors")) == weights
    assert _read(hf_hub_download("org/model-a", "sub/cfg.json")) == b'{"a": 1}'
    snap = huggingface_hub.snapshot_download("org/model-a")
    assert (Path(snap) / "notes.txt").read_text() == "hello hub\n"

    api.delete_repo("org/model-a")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/model-a")
    api.delete_repo("org/model-a", missing_ok=True)


def test_download_headers_head_and_range(local_hub):
    api = HfApi()
    api.create_repo("org/hdr")
    data = bytes(range(256)) * 8
    ci = api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id="org/hdr")
    url = hf_hub_url("org/hdr", "blob.bin")
    meta = get_hf_file_metadata(url)
    assert meta.commit_hash == ci.oid and meta.size == len(data) and meta.etag
    r = httpx.head(url)
    assert r.status_code == 200 and r.headers["X-Repo-Commit"] == ci.oid
    assert int(r.headers["Content-Length"]) == len(data) and r.headers["ETag"]
    r = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = httpx.get(url, headers={"Range": "bytes=-5"})
    assert r.content == data[-5:]


# --------------------------------------------------------------------------------------------- transformers round trip
def test_transformers_push_to_hub_from_pretrained(local_hub):
    model = _tiny()
    commit = model.push_to_hub("org/tiny", commit_message="push tiny")
    assert commit.oid
    files = HfApi().list_repo_files("org/tiny")
    assert "config.json" in files and "model.safetensors" in files

    local_hub.new_cache()  # prove the weights come from the server, not the local cache
    loaded = TinyHubModel.from_pretrained("org/tiny")
    assert loaded.config.hidden == 3
    assert torch.equal(loaded.lin.weight, model.lin.weight) and torch.equal(loaded.lin.bias, model.lin.bias)


# --------------------------------------------------------------------------------------------- revisions
def test_branches_tags_and_download_by_revision(local_hub):
    api = HfApi()
    api.create_repo("org/revs")
    c1 = api.upload_file(path_or_fileobj=b"v1", path_in_repo="value.txt", repo_id="org/revs").oid
    api.create_tag("org/revs", tag="v1.0")
    api.create_branch("org/revs", branch="dev")
    c_dev = api.upload_file(path_or_fileobj=b"dev", path_in_repo="value.txt", repo_id="org/revs", revision="dev").oid
    c2 = api.upload_file(path_or_fileobj=b"v2", path_in_repo="value.txt", repo_id="org/revs").oid
    api.create_branch("org/revs", branch="feature/x", revision=c1)  # slash in a branch name
    api.create_tag("org/revs", tag="v0", revision=c1)

    refs = api.list_repo_refs("org/revs")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": c2, "dev": c_dev, "feature/x": c1}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1.0": c1, "v0": c1}
    with pytest.raises(HfHubHTTPError):
        api.create_tag("org/revs", tag="v1.0")
    api.create_tag("org/revs", tag="v1.0", exist_ok=True)
    api.create_branch("org/revs", branch="dev", exist_ok=True)

    def get(rev):
        return _read(hf_hub_download("org/revs", "value.txt", revision=rev))

    assert get(None) == b"v2"
    assert get("main") == b"v2"
    assert get("dev") == b"dev"
    assert get("v1.0") == b"v1"
    assert get("feature/x") == b"v1"
    assert get(c1) == b"v1" and get(c_dev) == b"dev"
    assert api.model_info("org/revs", revision="v1.0").sha == c1
    assert api.model_info("org/revs", revision="dev").sha == c_dev
    commits = api.list_repo_commits("org/revs")
    assert [c.commit_id for c in commits[:2]] == [c2, c1]
    assert api.list_repo_files("org/revs", revision="feature/x") == [".gitattributes", "value.txt"]

    api.delete_tag("org/revs", tag="v0")
    api.delete_branch("org/revs", branch="feature/x")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/revs", revision="v0")


def test_hub_errors_map_to_client_exceptions(local_hub):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/nope")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "config.json")
    api.create_repo("org/err")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id="org/err")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/err", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/err", "a.txt", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/err", "missing.txt")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/err", path_in_repo="no/such/dir"))
    # wrong repo type: the model repo does not exist as a dataset, and vice versa
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/err")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/err", "a.txt", repo_type="dataset")
    api.create_repo("org/ds-only", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/ds-only")
    # committing to a missing branch is a revision error, not a silent branch creation
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="b.txt", repo_id="org/err", revision="ghost")
    # raw response shape
    r = httpx.get(f"{local_hub.url}/api/models/org/nope")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound" and "error" in r.json()


# --------------------------------------------------------------------------------------------- datasets
def test_datasets_push_to_hub_and_load_dataset(local_hub):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"episode_index": [0, 0, 1], "observation": [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]], "reward": [0.0, 1.0, 0.5]}
    )
    ds.push_to_hub("org/episodes")
    files = HfApi().list_repo_files("org/episodes", repo_type="dataset")
    assert any(f.endswith(".parquet") for f in files) and "README.md" in files

    local_hub.new_cache()
    back = datasets.load_dataset("org/episodes", split="train")
    assert back.num_rows == 3
    assert back["reward"] == pytest.approx([0.0, 1.0, 0.5])
    assert back["observation"][2] == pytest.approx([2.0, 3.0])


# --------------------------------------------------------------------------------------------- interrupted commits
def _state(api: HfApi, repo: str) -> tuple[str, dict[str, str]]:
    info = api.model_info(repo, files_metadata=True)
    return info.sha, {s.rfilename: s.blob_id for s in info.siblings}


@pytest.mark.parametrize("stage", ["after_blobs", "after_commit_object"])
def test_server_failing_mid_commit_leaves_previous_revision(local_hub, tmp_path, stage):
    api = HfApi()
    api.create_repo("org/atomic")
    api.upload_file(path_or_fileobj=b"good", path_in_repo="value.txt", repo_id="org/atomic")
    before = _state(api, "org/atomic")

    folder = tmp_path / "next"
    folder.mkdir()
    (folder / "value.txt").write_text("half-written")
    (folder / "w.safetensors").write_bytes(os.urandom(2048))
    local_hub.inject_commit_failure(stage)
    with pytest.raises(HfHubHTTPError) as e:
        api.upload_folder(repo_id="org/atomic", folder_path=folder, commit_message="doomed")
    assert e.value.response.status_code == 500
    assert _state(api, "org/atomic") == before
    local_hub.new_cache()
    assert _read(hf_hub_download("org/atomic", "value.txt")) == b"good"

    # the hub keeps working: the same upload succeeds afterwards
    ok = api.upload_folder(repo_id="org/atomic", folder_path=folder, commit_message="retry")
    assert api.model_info("org/atomic").sha == ok.oid
    assert _read(hf_hub_download("org/atomic", "value.txt", revision=ok.oid)) == b"half-written"


def test_client_dying_mid_upload_leaves_previous_revision(local_hub):
    api = HfApi()
    api.create_repo("org/died")
    api.upload_file(path_or_fileobj=b"good", path_in_repo="value.txt", repo_id="org/died")
    before = _state(api, "org/died")
    host, port = local_hub.url.removeprefix("http://").split(":")

    def send_truncated(path: str, body: bytes, claimed: int, method: str = "POST") -> None:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/x-ndjson\r\n"
                f"Content-Length: {claimed}\r\nAuthorization: Bearer {local_hub.token}\r\n\r\n"
            )
            s.sendall(head.encode() + body)
            s.shutdown(socket.SHUT_WR)  # the client "dies": no more bytes will come
            s.settimeout(5)
            while s.recv(65536):
                pass

    # 1. a commit whose NDJSON body is cut midway
    import base64

    lines = [
        {"key": "header", "value": {"summary": "partial"}},
        {"key": "file", "value": {"path": "value.txt", "content": base64.b64encode(b"bad").decode(), "encoding": "base64"}},
    ]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    send_truncated("/api/models/org/died/commit/main", body[: len(body) // 2], claimed=len(body))
    assert _state(api, "org/died") == before

    # 2. an LFS upload cut midway: the object is not stored, so a commit referencing it is refused
    import hashlib

    payload = os.urandom(10_000)
    oid = hashlib.sha256(payload).hexdigest()
    send_truncated(f"/lfs-upload/{oid}", payload[:3000], claimed=len(payload), method="PUT")
    assert not local_hub.hub.store.has_blob(oid)
    r = httpx.post(
        f"{local_hub.url}/api/models/org/died/commit/main",
        content=json.dumps({"key": "header", "value": {"summary": "lfs"}}).encode()
        + b"\n"
        + json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": 10_000}}).encode(),
    )
    assert r.status_code == 422
    assert _state(api, "org/died") == before
    # an upload whose bytes do not match the announced oid is rejected as well
    corrupt = payload[:-1] + bytes([payload[-1] ^ 1])  # differs in its last byte, whatever the random payload
    r = httpx.put(f"{local_hub.url}/lfs-upload/{oid}", content=corrupt)
    assert r.status_code == 400 and not local_hub.hub.store.has_blob(oid)


def test_concurrent_commits_are_serialised(local_hub):
    from concurrent.futures import ThreadPoolExecutor

    api = HfApi()
    api.create_repo("org/busy")

    def push(i: int) -> str:
        return api.upload_file(path_or_fileobj=f"{i}".encode(), path_in_repo=f"f{i}.txt", repo_id="org/busy").oid

    with ThreadPoolExecutor(8) as pool:
        oids = list(pool.map(push, range(8)))
    files = api.list_repo_files("org/busy")
    assert {f"f{i}.txt" for i in range(8)} <= set(files)  # no lost update
    history = [c.commit_id for c in api.list_repo_commits("org/busy")]
    assert len(history) == 9 and set(oids) <= set(history)


def test_repos_persist_across_server_restarts(tmp_path):
    root = tmp_path / "root"
    with start_local_hub(root) as hub, hf_env(hub.url, tmp_path / "home1"):
        HfApi().create_repo("org/persist")
        sha = HfApi().upload_file(path_or_fileobj=b"kept", path_in_repo="k.txt", repo_id="org/persist").oid
        HfApi().create_tag("org/persist", tag="v1")
    with start_local_hub(root) as hub, hf_env(hub.url, tmp_path / "home2"):
        assert HfApi().model_info("org/persist", revision="v1").sha == sha
        assert _read(hf_hub_download("org/persist", "k.txt", revision="v1")) == b"kept"


# --------------------------------------------------------------------------------------------- offline mode
_OFFLINE_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests_dir!r})
from huggingface_hub import constants
assert constants.HF_HUB_OFFLINE, "offline mode not picked up"
from test_hub_server import TinyHubModel
m = TinyHubModel.from_pretrained("org/offline", revision="v1")
print("LOADED", m.config.hidden, float(m.lin.weight.sum()))
try:
    TinyHubModel.from_pretrained("org/never-downloaded")
except OSError:
    print("MISSING_OK")
"""


def test_offline_from_pretrained_with_filled_cache(local_hub):
    model = _tiny(hidden=5, seed=1)
    model.push_to_hub("org/offline")
    HfApi().create_tag("org/offline", tag="v1")
    local_hub.new_cache()
    TinyHubModel.from_pretrained("org/offline", revision="v1")  # fills the cache (refs/v1 -> commit)
    local_hub.hub.stop()  # no server any more: everything must come from the cache

    script = _OFFLINE_SCRIPT.format(tests_dir=str(Path(__file__).parent))
    env = local_hub.offline_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"LOADED 5 {float(model.lin.weight.detach().sum())}" in out.stdout
    assert "MISSING_OK" in out.stdout


# --------------------------------------------------------------------------------------------- CLI + env helper
def test_cli_serves_on_free_port(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mbdpo_hub_testing.hub_server", "--port", "0", "--root", str(tmp_path / "cli")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        r = httpx.get(f"{url}/api/models/org/none")
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"
        r = httpx.post(f"{url}/api/repos/create", json={"name": "m", "organization": "org"})
        assert r.status_code == 200 and r.json()["url"] == f"{url}/org/m"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (tmp_path / "cli" / "repos" / "models" / "org" / "m" / "refs.json").is_file()


def test_hf_env_restores_constants(tmp_path):
    before = (constants.ENDPOINT, constants.HF_HUB_CACHE, os.environ.get("HF_ENDPOINT"))
    with hf_env("http://127.0.0.1:9", tmp_path / "h", offline=True):
        assert constants.ENDPOINT == "http://127.0.0.1:9" and constants.HF_HUB_OFFLINE
    assert (constants.ENDPOINT, constants.HF_HUB_CACHE, os.environ.get("HF_ENDPOINT")) == before


@pytest.mark.realhub
def test_realhub_marker_runs_only_when_enabled():
    from mbdpo_hub_testing.pytest_plugin import real_hub_enabled

    assert real_hub_enabled(), "realhub tests must be skipped unless MBDPO_HUB_REAL_TESTS=1"


def test_bad_start_arguments(tmp_path):
    with start_local_hub(tmp_path / "r") as hub:
        with pytest.raises(ValueError):
            hub.inject_commit_failure("sometime")
