"""Parquet episode datasets, buffer filling, window sampler and the TD-MPC2 chunk importer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

from mbdpo_hub.buffer import ReplayBuffer  # noqa: E402
from mbdpo_hub.data import (  # noqa: E402
    DatasetWriter,
    convert_dataset_main,
    convert_tdmpc2_chunks,
    episode_table,
    fill_buffer,
    load_dataset_folder,
    load_tdmpc2_chunk,
    read_info,
    read_stats,
    read_tasks,
    tdmpc2_task_list,
    write_dataset_card,
)
from mbdpo_hub.data import format as dfmt  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"
CHUNK = FIXTURES / "tdmpc2-mt30-chunk-tiny.pt"
needs_chunk = pytest.mark.skipif(not CHUNK.exists(), reason=f"shared fixture {CHUNK} not found")

TASKS = [
    {"name": "big", "obs_dim": 5, "action_dim": 3, "episode_length": 40},
    {"name": "small", "obs_dim": 3, "action_dim": 1, "episode_length": 40},
]
OBS_DIM, ACT_DIM = 5, 3


def synth_episode(ep: int, steps: int, task: int, terminate: bool = False, rng=None):
    """obs[t, 0] = ep, obs[t, 1] = t (true dims only); action[t] = (ep, t, ...) ; reward = 1000*ep + t."""
    rng = rng or np.random.default_rng(ep)
    od, ad = TASKS[task]["obs_dim"], TASKS[task]["action_dim"]
    n = steps + 1
    obs = rng.normal(size=(n, od)).astype(np.float32)
    obs[:, 0], obs[:, 1] = ep, np.arange(n)
    act = rng.uniform(-1, 1, size=(n, ad)).astype(np.float32)
    act[:, 0] = ep
    act[0] = np.nan
    rew = (1000.0 * ep + np.arange(n)).astype(np.float32)
    rew[0] = np.nan
    term = np.zeros(n, bool)
    term[-1] = terminate
    return obs, act, rew, term


LENGTHS = [12, 30, 7, 25, 18, 40]


def write_synth(folder: Path, max_shard_rows=50, lengths=LENGTHS, start_ep=0, **kw):
    eps = []
    with DatasetWriter(folder, TASKS, obs_dim=OBS_DIM, action_dim=ACT_DIM, max_shard_rows=max_shard_rows, **kw) as w:
        for i, steps in enumerate(lengths):
            ep = start_ep + i
            task = ep % 2
            o, a, r, t = synth_episode(ep, steps, task, terminate=(ep % 3 == 2))
            idx = w.add_episode(o, a, r, t, task=TASKS[task]["name"] if ep % 4 == 0 else task)
            assert idx == ep
            eps.append((o, a, r, t, task))
    return eps


@pytest.fixture()
def cache(tmp_path):
    return tmp_path / "hf_cache"


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path, monkeypatch):
    # loads without an explicit cache_dir must not write into the user's HF cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "default_hf_cache")


def test_round_trip_write_load_fill_sample(tmp_path, cache):
    folder = tmp_path / "ds"
    eps = write_synth(folder)
    assert sorted(p.name for p in (folder / "data").iterdir()) == [f"shard-0000{i}.parquet" for i in range(4)]
    info = read_info(folder)
    assert info["num_episodes"] == 6 and info["num_frames"] == sum(LENGTHS) + 6
    assert all(s["rows"] <= 50 or s["first_episode"] == s["last_episode"] for s in info["shards"])
    tasks = read_tasks(folder)
    assert [t["name"] for t in tasks["tasks"]] == ["big", "small"]
    assert [t["num_episodes"] for t in tasks["tasks"]] == [3, 3]
    assert (folder / "README.md").read_text().startswith("---")

    ds = load_dataset_folder(folder, cache_dir=cache)
    assert len(ds) == sum(LENGTHS) + 6
    assert ds.features["observation"].length == OBS_DIM
    table = ds.data.table
    et = episode_table(table)
    assert et["length"].tolist() == [L + 1 for L in LENGTHS]
    # padding and entry-0 fillers, flags, per row
    obs = np.asarray(table.column("observation").combine_chunks().flatten()).reshape(-1, OBS_DIM)
    act = np.asarray(table.column("action").combine_chunks().flatten()).reshape(-1, ACT_DIM)
    rew = table.column("reward").to_numpy()
    term = table.column("terminated").to_numpy()
    trunc = table.column("truncated").to_numpy()
    for e, (o, a, r, t, task) in enumerate(eps):
        s, n = et["start"][e], et["length"][e]
        np.testing.assert_array_equal(obs[s:s + n, :o.shape[1]], o)
        assert np.all(obs[s:s + n, o.shape[1]:] == 0)
        np.testing.assert_array_equal(act[s + 1:s + n, :a.shape[1]], a[1:])
        assert np.all(act[s:s + n, a.shape[1]:] == 0) and np.all(act[s] == 0) and rew[s] == 0
        np.testing.assert_array_equal(rew[s + 1:s + n], r[1:])
        assert term[s:s + n].tolist() == t.tolist()
        assert trunc[s:s + n].tolist() == [False] * (n - 1) + [not t[-1]]
        assert et["task_index"][e] == task

    buf = ReplayBuffer(1000, OBS_DIM, ACT_DIM, 5, 64, seed=0)
    summary = fill_buffer(buf, ds)
    assert summary == {"num_episodes": 6, "num_steps": sum(LENGTHS), "task_ids": [0, 1]}
    assert buf.num_episodes == 6
    for _ in range(10):
        s = buf.sample(256)
        ep, fr = s["obs"][..., 0], s["obs"][..., 1]
        assert torch.all(ep == ep[:1]) and torch.all(fr[1:] - fr[:-1] == 1)
        assert torch.equal(s["reward"][..., 0], 1000 * ep[1:] + fr[1:])
        assert torch.equal(s["action"][..., 0], ep[1:])
        assert torch.equal(s["task"], ep[0].long() % 2)
        small = s["task"] == 1
        assert torch.all(s["obs"][:, small, 3:] == 0) and torch.all(s["action"][:, small, 1:] == 0)
        lengths = torch.tensor(LENGTHS, dtype=torch.float32)
        assert torch.all(fr[-1] <= lengths[ep[0].long()])
        tflag = (fr[1:] == lengths[ep[1:].long()]) & (ep[1:].long() % 3 == 2)
        assert torch.equal(s["terminated"][..., 0] > 0, tflag)
    # a path works too
    buf2 = ReplayBuffer(1000, OBS_DIM, ACT_DIM, 5, 8)
    fill_buffer(buf2, folder)
    assert torch.equal(buf2.state_dict()["obs"], buf.state_dict()["obs"])


def test_stats(tmp_path):
    folder = tmp_path / "ds"
    eps = write_synth(folder)
    st = read_stats(folder)
    for task, name in ((0, "big"), (1, "small")):
        mine = [e for e in eps if e[4] == task]
        o = np.concatenate([np.pad(e[0], [(0, 0), (0, OBS_DIM - e[0].shape[1])]) for e in mine])
        a = np.concatenate([np.pad(e[1][1:], [(0, 0), (0, ACT_DIM - e[1].shape[1])]) for e in mine])
        r = np.concatenate([e[2][1:] for e in mine])
        ret = np.array([e[2][1:].sum() for e in mine])
        d = st["per_task"][name]
        assert d["num_episodes"] == len(mine) and d["task_index"] == task
        np.testing.assert_allclose(d["observation"]["mean"], o.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d["observation"]["std"], o.std(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(d["action"]["min"], a.min(0))
        np.testing.assert_allclose(d["action"]["max"], a.max(0))
        np.testing.assert_allclose(d["reward"]["mean"], r.mean(), rtol=1e-6)
        np.testing.assert_allclose(d["return"]["mean"], ret.mean(), rtol=1e-6)
        np.testing.assert_allclose(d["return"]["std"], ret.std(), rtol=1e-4)
    assert st["all"]["num_episodes"] == 6 and st["all"]["num_transitions"] == sum(LENGTHS)


def test_append_continues_episode_index_and_merges_stats(tmp_path, cache):
    one = tmp_path / "one"
    write_synth(one, lengths=LENGTHS)
    two = tmp_path / "two"
    write_synth(two, lengths=LENGTHS[:4])
    write_synth(two, lengths=LENGTHS[4:], start_ep=4, append=True)
    info = read_info(two)
    assert info["num_episodes"] == 6 and len(info["shards"]) >= 2
    a, b = read_stats(one), read_stats(two)
    for name in ("big", "small"):
        for k in ("observation", "action", "reward", "return"):
            for m in ("mean", "std", "min", "max"):
                np.testing.assert_allclose(a["per_task"][name][k][m], b["per_task"][name][k][m], rtol=1e-4, atol=1e-5)
    ds = load_dataset_folder(two, cache_dir=cache)
    et = episode_table(ds.data.table)
    assert et["episode_index"].tolist() == list(range(6))
    assert et["length"].tolist() == [L + 1 for L in LENGTHS]
    assert [t["num_episodes"] for t in read_tasks(two)["tasks"]] == [3, 3]


def test_existing_folder_needs_flag(tmp_path):
    folder = tmp_path / "ds"
    write_synth(folder)
    with pytest.raises(FileExistsError):
        DatasetWriter(folder, TASKS)


def test_failed_write_leaves_old_dataset_intact(tmp_path, monkeypatch, cache):
    folder = tmp_path / "ds"
    write_synth(folder)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(folder, TASKS, overwrite=True, max_shard_rows=10) as w:
            w.add_episode(*synth_episode(0, 50, 0)[:3], task=0)
            raise RuntimeError("boom")
    # failure inside close() (after the shards were written)
    def broken_card(folder, info):
        raise OSError("disk full")

    monkeypatch.setattr(dfmt, "write_dataset_card", broken_card)
    w = DatasetWriter(folder, TASKS, append=True, max_shard_rows=10)
    w.add_episode(*synth_episode(9, 30, 1)[:3], task=1)
    with pytest.raises(OSError, match="disk full"):
        w.close()
    # bad input raises before anything is swapped
    with pytest.raises(ValueError, match="exceeds"):
        with DatasetWriter(folder, TASKS, overwrite=True) as w2:
            w2.add_episode(np.zeros((5, 9)), np.zeros((5, 3)), np.zeros(5), task=0)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert len(load_dataset_folder(folder, cache_dir=cache)) == sum(LENGTHS) + 6


def test_crash_between_renames_is_recovered(tmp_path):
    folder = tmp_path / "ds"
    write_synth(folder)
    backup = tmp_path / ".ds.old-deadbeef"
    folder.rename(backup)
    assert read_info(folder)["num_episodes"] == 6  # restored from the backup
    assert folder.exists() and not backup.exists()


def test_corrupted_shard_clear_error(tmp_path, cache):
    folder = tmp_path / "ds"
    write_synth(folder)
    shard = folder / "data" / "shard-00002.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shard-00002.parquet"):
        load_dataset_folder(folder, cache_dir=cache)
    shard.write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="shard-00002.parquet"):
        load_dataset_folder(folder, cache_dir=cache)
    shard.unlink()
    with pytest.raises(ValueError, match="shard-00002.parquet"):
        load_dataset_folder(folder, cache_dir=cache)


def test_dims_mismatch_clear_error(tmp_path, cache):
    folder = tmp_path / "ds"
    write_synth(folder)
    ds = load_dataset_folder(folder, cache_dir=cache)
    with pytest.raises(ValueError, match=r"observation dim 5 .*obs.* 7|observation dim 5.*7"):
        fill_buffer(ReplayBuffer(1000, 7, ACT_DIM, 3, 4), ds)
    with pytest.raises(ValueError, match=r"action dim 3.*2"):
        fill_buffer(ReplayBuffer(1000, OBS_DIM, 2, 3, 4), ds)
    buf = ReplayBuffer(1000, 7, 4, 3, 4)
    fill_buffer(buf, ds, pad=True)
    s = buf.sample(64)
    assert torch.all(s["obs"][..., 5:] == 0) and torch.all(s["action"][..., 3:] == 0)
    with pytest.raises(ValueError, match=r"obs dim 9 exceeds .* 5"):
        with DatasetWriter(tmp_path / "x", TASKS) as w:
            w.add_episode(np.zeros((4, 9)), np.zeros((4, 3)), np.zeros(4), task=0)
    with pytest.raises(ValueError, match="true obs dim 3"):
        with DatasetWriter(tmp_path / "y", TASKS) as w:
            w.add_episode(np.zeros((4, 4)), np.zeros((4, 1)), np.zeros(4), task="small")
    with pytest.raises(ValueError, match="unknown task"):
        with DatasetWriter(tmp_path / "z", TASKS) as w:
            w.add_episode(np.zeros((4, 5)), np.zeros((4, 3)), np.zeros(4), task="nope")


def test_fill_buffer_task_filter_remap_and_subset(tmp_path, cache):
    folder = tmp_path / "ds"
    write_synth(folder)
    ds = load_dataset_folder(folder, cache_dir=cache)
    buf = ReplayBuffer(1000, OBS_DIM, ACT_DIM, 3, 4, seed=0)
    out = fill_buffer(buf, ds, tasks=["small"], task_map={"small": 17})
    assert out["num_episodes"] == 3 and out["task_ids"] == [17]
    s = buf.sample(200)
    assert torch.all(s["task"] == 17) and torch.all(s["obs"][0, :, 0] % 2 == 1)
    # model task list: ids = positions in the model's list
    buf = ReplayBuffer(1000, OBS_DIM, ACT_DIM, 3, 4)
    out = fill_buffer(buf, ds, task_map=["x", "small", "y", "big"])
    assert out["task_ids"] == [1, 3]
    with pytest.raises(ValueError, match="big"):
        fill_buffer(ReplayBuffer(1000, OBS_DIM, ACT_DIM, 3, 4), ds, task_map=["small"])
    with pytest.raises(ValueError, match="not in the dataset"):
        fill_buffer(ReplayBuffer(1000, OBS_DIM, ACT_DIM, 3, 4), ds, tasks=["nope"])
    buf = ReplayBuffer(1000, OBS_DIM, ACT_DIM, 3, 4)
    assert fill_buffer(buf, ds, episodes=[1, 4])["num_episodes"] == 2
    assert sorted(int(buf.get_episode(i)["obs"][0, 0]) for i in range(2)) == [1, 4]
    buf = ReplayBuffer(1000, OBS_DIM, ACT_DIM, 3, 4)
    assert fill_buffer(buf, ds, episodes=2, chunk_rows=5)["num_episodes"] == 2
    # select() keeps the table consistent (indices mapping is flattened)
    sub = ds.select(range(int(episode_table(ds.data.table)["start"][2])))
    buf = ReplayBuffer(1000, OBS_DIM, ACT_DIM, 3, 4)
    assert fill_buffer(buf, sub)["num_episodes"] == 2


def test_dataset_card_function(tmp_path):
    p = write_dataset_card(tmp_path, {"name": "demo", "obs_dim": 3, "action_dim": 1, "num_episodes": 2,
                                      "num_frames": 10, "tasks": [{"task_index": 0, "name": "t", "obs_dim": 3,
                                                                    "action_dim": 1, "num_episodes": 2}]})
    text = p.read_text()
    assert "path: data/*.parquet" in text and "# demo" in text and "| 0 | `t` | 3 | 1 | - | 2 |" in text
    assert "license: mit" in text  # the same card (and licence) as the one pushed to the Hub


# ------------------------------------------------------------------------------------- TD-MPC2 importer
@needs_chunk
def test_load_tdmpc2_chunk_fixture_safely():
    import sys

    side = json.loads(CHUNK.with_suffix(".json").read_text())
    d = load_tdmpc2_chunk(CHUNK)
    assert "tensordict" not in sys.modules
    assert d["batch_size"] == (3, 501)
    for k in side["keys"]:
        assert list(d[k["key"]].shape) == k["shape"]
        assert str(d[k["key"]].dtype) == f"torch.{k['dtype']}"
    assert torch.isnan(d["action"][:, 0]).all() and torch.isnan(d["reward"][:, 0]).all()
    assert d["task"][:, 0].tolist() == [e["task_id"] for e in side["episodes"]]


@needs_chunk
def test_task_lists_match_fixture_config():
    from mbdpo_hub.data.tdmpc2 import tdmpc2_task_dims
    from mbdpo_hub.envs.tasks import MT30_TASKS

    cfg = json.loads(CHUNK.with_suffix(".json").read_text())["config"]
    assert tdmpc2_task_list("mt30") == cfg["tasks"] == MT30_TASKS
    assert [tdmpc2_task_dims(n)[:2] for n in cfg["tasks"]] == list(zip(cfg["obs_shapes"], cfg["action_dims"]))
    mt80 = tdmpc2_task_list("mt80")
    assert len(mt80) == 80 and mt80[:30] == cfg["tasks"] and mt80[30] == "mw-assembly"
    assert tdmpc2_task_dims("mw-reach") == (39, 4, 100)


@needs_chunk
def test_convert_tdmpc2_chunk_fixture(tmp_path, cache):
    side = json.loads(CHUNK.with_suffix(".json").read_text())
    out = convert_tdmpc2_chunks(CHUNK, tmp_path / "mt30", task_set="mt30", max_shard_rows=1000)
    info = read_info(out)
    assert info["num_episodes"] == 3 and info["num_frames"] == 3 * 501
    assert (info["obs_dim"], info["action_dim"]) == (24, 6)
    tasks = read_tasks(out)["tasks"]
    assert len(tasks) == 30 and tasks[29]["name"] == "pendulum-spin" and tasks[29]["obs_dim"] == 3
    st = read_stats(out)
    walker = [e["episode_return"] for e in side["episodes"] if e["task"] == "walker-walk"]
    np.testing.assert_allclose(st["per_task"]["walker-walk"]["return"]["mean"], np.mean(walker), rtol=1e-5)
    np.testing.assert_allclose(st["per_task"]["pendulum-spin"]["return"]["mean"], 153.3202362060547, rtol=1e-5)
    assert st["per_task"]["walker-stand"]["num_episodes"] == 0

    ds = load_dataset_folder(out, cache_dir=cache)
    et = episode_table(ds.data.table)
    assert et["task_index"].tolist() == [1, 1, 29] and et["length"].tolist() == [501] * 3
    chunk = load_tdmpc2_chunk(CHUNK)
    obs = np.asarray(ds.data.table.column("observation").combine_chunks().flatten()).reshape(3, 501, 24)
    np.testing.assert_array_equal(obs, chunk["obs"].numpy())
    act = np.asarray(ds.data.table.column("action").combine_chunks().flatten()).reshape(3, 501, 6)
    assert np.all(act[:, 0] == 0)
    np.testing.assert_array_equal(act[:, 1:], chunk["action"][:, 1:].numpy())
    assert np.all(ds.data.table.column("truncated").to_numpy().reshape(3, 501)[:, -1])

    buf = ReplayBuffer(5000, 24, 6, 3, 256, seed=0)
    fill_buffer(buf, ds)
    s = buf.sample()
    assert not any(torch.isnan(v.float()).any() for v in s.values())
    pend = s["task"] == 29
    assert torch.all(s["obs"][:, pend, 3:] == 0) and torch.all(s["action"][:, pend, 1:] == 0)
    # an mt80 model (obs 39) can take the mt30 data with padding; task ids are shared by both lists
    buf80 = ReplayBuffer(5000, 39, 6, 3, 16)
    fill_buffer(buf80, ds, pad=True, task_map=tdmpc2_task_list("mt80"))
    assert sorted(set(buf80.sample(200)["task"].tolist())) == [1, 29]


@needs_chunk
def test_convert_cli(tmp_path, capsys):
    rc = convert_dataset_main([str(CHUNK.parent / CHUNK.name), str(tmp_path / "out"), "--task-set", "mt30"])
    assert rc == 0 and "3 episodes" in capsys.readouterr().out
    assert convert_dataset_main([str(CHUNK), str(tmp_path / "out")]) == 2  # exists, no --append/--overwrite
    assert "exists" in capsys.readouterr().err
    assert convert_dataset_main([str(CHUNK), str(tmp_path / "out"), "--append"]) == 0
    assert read_info(tmp_path / "out")["num_episodes"] == 6
    assert convert_dataset_main([str(CHUNK), str(tmp_path / "o80"), "--task-set", "mt80"]) == 2
    assert "mt80" in capsys.readouterr().err


class NotATensor:  # a global the weights-only unpickler must refuse
    def __init__(self):
        self.x = 1


def _synthetic_chunk(e=2, t=9, o=24, a=6, tasks=(3, 16)):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(e, t, o, generator=g)
    action = torch.rand(e, t, a, generator=g) * 2 - 1
    reward = torch.rand(e, t, generator=g)
    action[:, 0] = float("nan")
    reward[:, 0] = float("nan")
    task = torch.tensor(tasks, dtype=torch.int32)[:, None].expand(e, t).contiguous()
    return {"obs": obs, "action": action, "reward": reward, "task": task}


def test_plain_dict_chunk_and_validation_errors(tmp_path):
    d = _synthetic_chunk()
    torch.save(d, tmp_path / "chunk_0.pt")
    out = convert_tdmpc2_chunks(tmp_path, tmp_path / "ds", task_set=tdmpc2_task_list("mt30"))
    assert read_info(out)["num_episodes"] == 2
    assert [t["num_episodes"] for t in read_tasks(out)["tasks"] if t["num_episodes"]] == [1, 1]

    bad = _synthetic_chunk()
    bad["reward"][1, 4] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"nan.pt: non-finite reward in episode 1"):
        convert_tdmpc2_chunks(tmp_path / "nan.pt", tmp_path / "x1", task_set=tdmpc2_task_list("mt30"))
    torch.save(_synthetic_chunk(tasks=(3, 30)), tmp_path / "task.pt")
    with pytest.raises(ValueError, match="task id 30"):
        convert_tdmpc2_chunks(tmp_path / "task.pt", tmp_path / "x2", task_set=tdmpc2_task_list("mt30"))
    torch.save(_synthetic_chunk(o=39), tmp_path / "dims.pt")
    with pytest.raises(ValueError, match=r"\(39, 6\).*mt30.*\(24, 6\)"):
        convert_tdmpc2_chunks(tmp_path / "dims.pt", tmp_path / "x3", task_set="mt30")
    for name in ("x1", "x2", "x3"):
        assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unsafe_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"obs": torch.zeros(1, 2, 3), "payload": NotATensor()}, p)
    with pytest.raises(ValueError, match="refusing to load"):
        load_tdmpc2_chunk(p)
    with pytest.raises(FileNotFoundError):
        load_tdmpc2_chunk(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------- LeRobot v3 export / import
def _entries(folder):
    from mbdpo_hub.data.reading import dataset_arrow_table

    t = dataset_arrow_table(load_dataset_folder(folder))
    return {c: t.column(c).to_pylist() for c in ("episode_index", "frame_index", "task_index", "observation",
                                                  "action", "reward", "terminated", "truncated")}


def test_lerobot_export_schema_and_exact_round_trip(tmp_path):
    import pyarrow.parquet as pq

    from mbdpo_hub.data.lerobot import export_lerobot, import_lerobot

    src = tmp_path / "ds"
    write_synth(src)
    out = export_lerobot(src, tmp_path / "lerobot", fps=25)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 25
    assert info["total_episodes"] == len(LENGTHS) and info["total_frames"] == sum(LENGTHS)
    feats = info["features"]
    for k in ("observation.state", "action", "next.reward", "next.done", "timestamp", "frame_index",
              "episode_index", "index", "task_index"):
        assert k in feats, k
    assert feats["observation.state"]["shape"] == [OBS_DIM] and len(feats["action"]["names"]) == ACT_DIM
    frames = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    assert frames.num_rows == sum(LENGTHS) and frames.column("index").to_pylist() == list(range(sum(LENGTHS)))
    # LeRobot's row layout: frame t holds (state_t, action_t, reward_t), not the buffer's (obs_t, a_{t-1}, r_{t-1})
    ours = _entries(src)
    assert frames.column("action").to_pylist()[0] == ours["action"][1]
    assert frames.column("next.reward").to_pylist()[0] == ours["reward"][1]
    eps = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    assert eps.column("length").to_pylist() == list(LENGTHS)
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert len(stats["observation.state"]["mean"]) == OBS_DIM and stats["next.reward"]["count"] == [sum(LENGTHS)]
    back = import_lerobot(out, tmp_path / "back")
    assert _entries(back) == ours  # exact
    assert read_tasks(back)["tasks"] == read_tasks(src)["tasks"]
    with pytest.raises(FileExistsError, match="exists"):
        export_lerobot(src, out)


def test_lerobot_task_index_is_the_row_of_tasks_parquet(tmp_path):
    """LeRobot names a frame's task by position (``meta.tasks.iloc[task_index]``): with our task indices 5 and 2
    used and 0 unused, the frames hold rows 0..1 of tasks.parquet, and the import restores our indices."""
    import pandas as pd
    import pyarrow.parquet as pq

    from mbdpo_hub.data.lerobot import export_lerobot, import_lerobot

    tasks = [{"name": "idle", "obs_dim": 3, "action_dim": 1, "episode_length": 40, "task_index": 0},
             {"name": "small", "obs_dim": 3, "action_dim": 1, "episode_length": 40, "task_index": 2},
             {"name": "big", "obs_dim": 5, "action_dim": 3, "episode_length": 40, "task_index": 5}]
    src = tmp_path / "ds"
    with DatasetWriter(src, tasks, obs_dim=OBS_DIM, action_dim=ACT_DIM) as w:
        for ep, steps in enumerate([6, 4, 5]):
            task = 5 if ep != 1 else 2
            o, a, r, t = synth_episode(ep, steps, 0 if task == 5 else 1)
            w.add_episode(o, a, r, t, task=task)
    out = export_lerobot(src, tmp_path / "lerobot")
    names = pd.read_parquet(out / "meta" / "tasks.parquet")
    assert list(names.index) == ["small", "big"] and names["task_index"].tolist() == [0, 1]
    assert json.loads((out / "meta" / "info.json").read_text())["total_tasks"] == 2
    frames = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet").to_pydict()
    eps = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    ep_task = dict(zip(eps["episode_index"], (t[0] for t in eps["tasks"])))
    assert all(names.iloc[ti].name == ep_task[e] for ti, e in zip(frames["task_index"], frames["episode_index"]))
    assert [ep_task[e] for e in (0, 1, 2)] == ["big", "small", "big"]
    back = import_lerobot(out, tmp_path / "back")
    assert _entries(back) == _entries(src)  # our task indices 5, 2, 5 again
    assert read_tasks(back)["tasks"] == read_tasks(src)["tasks"]


def test_lerobot_import_of_a_foreign_dataset_drops_each_last_transition(tmp_path):
    import pyarrow.parquet as pq

    from mbdpo_hub.data.lerobot import export_lerobot, import_lerobot

    src = tmp_path / "ds"
    write_synth(src)
    out = export_lerobot(src, tmp_path / "lerobot")
    f = out / "data" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(f)
    pq.write_table(t.drop_columns(["next.observation.state", "next.terminated", "next.truncated"]), f)
    info = json.loads((out / "meta" / "info.json").read_text())
    info.pop("mbdpo_hub")
    (out / "meta" / "info.json").write_text(json.dumps(info))
    back = import_lerobot(out, tmp_path / "back")
    assert read_info(back)["num_frames"] == sum(LENGTHS) - len(LENGTHS) + len(LENGTHS)  # T-1 steps + reset row
    assert {t["name"] for t in read_tasks(back)["tasks"]} == {t["name"] for t in TASKS}
    with pytest.raises(ValueError, match="already an mbdpo_hub dataset"):
        import_lerobot(tmp_path / "ds", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset"):
        import_lerobot(tmp_path, tmp_path / "x")


def test_dataset_paths_given_as_strings_recover_and_missing_ones_are_named(tmp_path):
    import os

    folder = tmp_path / "ds"
    write_synth(folder)
    os.rename(folder, tmp_path / ".ds.old-deadbeef")  # a crash between the two renames of a swap
    assert read_info(str(folder))["num_episodes"] == len(LENGTHS)  # a str path recovers too
    with pytest.raises(FileNotFoundError, match="no such local folder"):
        read_tasks(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no such local folder"):
        read_tasks("relative/missing/folder")


def test_fill_buffer_names_bad_columns_and_unknown_tasks(tmp_path):
    import pyarrow as pa

    from mbdpo_hub.buffer import ReplayBuffer
    from mbdpo_hub.data.reading import dataset_arrow_table

    folder = tmp_path / "ds"
    write_synth(folder)
    table = dataset_arrow_table(load_dataset_folder(folder))
    buf = ReplayBuffer(1000, OBS_DIM, ACT_DIM, 3, 4)
    with pytest.raises(ValueError, match="no 'reward' column"):
        fill_buffer(buf, table.drop_columns(["reward"]))
    strings = table.set_column(table.column_names.index("reward"), "reward",
                               pa.array([str(v) for v in table.column("reward").to_pylist()]))
    with pytest.raises(ValueError, match="column 'reward' has type string"):
        fill_buffer(buf, strings)
    meta = read_tasks(folder)
    meta = {**meta, "tasks": meta["tasks"][:1]}
    with pytest.raises(ValueError, match="task_index \\[1\\], which meta/tasks.json does not list"):
        fill_buffer(buf, table, dataset_tasks=meta)
