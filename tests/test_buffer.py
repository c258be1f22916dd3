"""ReplayBuffer / sample_mixed / EpisodeRecorder tests.

Episodes encode (episode id, frame) in their observations so that window boundaries and the
action/reward alignment of the layout can be checked exactly:
obs[t] = (ep, t, 0), action[t] = (ep, t) = a_{t-1}, reward[t] = 1000*ep + t (entry 0: NaN fillers).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from mbdpo_hub.buffer import ReplayBuffer, sample_mixed
from mbdpo_hub.recorder import EpisodeRecorder

O, A = 3, 2


def make_episode(ep: int, steps: int, terminate: bool = False):
    n = steps + 1
    t = np.arange(n, dtype=np.float32)
    obs = np.stack([np.full(n, ep, np.float32), t, np.zeros(n, np.float32)], 1)
    action = np.stack([np.full(n, ep, np.float32), t], 1)
    reward = 1000.0 * ep + t
    action[0] = np.nan
    reward[0] = np.nan
    term = np.zeros(n, np.float32)
    if terminate:
        term[-1] = 1.0
    return obs, action, reward.astype(np.float32), term


def filled(capacity=2000, horizon=4, batch=64, lengths=(20, 35, 50, 3, 41), seed=0, **kw):
    buf = ReplayBuffer(capacity, O, A, horizon, batch, seed=seed, **kw)
    for ep, steps in enumerate(lengths):
        o, a, r, term = make_episode(ep, steps, terminate=(ep % 2 == 1))
        buf.add_episode(o, a, r, term, task=ep % 3)
    return buf


def check_windows(s, horizon, live_lengths: dict[int, int]):
    obs, act, rew, term, task = s["obs"], s["action"], s["reward"], s["terminated"], s["task"]
    ep = obs[..., 0]
    fr = obs[..., 1]
    # never crosses an episode boundary
    assert torch.all(ep == ep[:1])
    assert torch.all(fr[1:] - fr[:-1] == 1)
    assert torch.all(fr[0] >= 0)
    for e, f_last in zip(ep[0].long().tolist(), fr[-1].long().tolist()):
        assert e in live_lengths, f"sampled evicted episode {e}"
        assert f_last <= live_lengths[e], "window runs past the episode end"
    # layout: action/reward at index t come from entry start+1+t
    assert torch.equal(act[..., 0], ep[1:])
    assert torch.equal(act[..., 1], fr[1:])
    assert torch.equal(rew[..., 0], 1000.0 * ep[1:] + fr[1:])
    assert not torch.isnan(act).any() and not torch.isnan(rew).any()
    assert torch.equal(task, (ep[0].long() % 3))


def test_sample_shapes_and_dtypes():
    buf = filled(horizon=5, batch=16)
    s = buf.sample()
    assert s["obs"].shape == (6, 16, O) and s["obs"].dtype == torch.float32
    assert s["action"].shape == (5, 16, A) and s["action"].dtype == torch.float32
    assert s["reward"].shape == (5, 16, 1) and s["terminated"].shape == (5, 16, 1)
    assert s["terminated"].dtype == torch.float32
    assert s["task"].shape == (16,) and s["task"].dtype == torch.int64
    assert buf.sample(batch_size=7)["obs"].shape == (6, 7, O)


def test_windows_never_cross_episodes_and_layout():
    lengths = (20, 35, 50, 3, 41)
    buf = filled(lengths=lengths, horizon=4)
    assert buf.num_episodes == 5 and buf.num_steps == sum(lengths) == len(buf)
    assert buf.num_entries == sum(lengths) + 5
    for _ in range(20):
        check_windows(buf.sample(256), 4, dict(enumerate(lengths)))


def test_uniform_over_valid_starts_and_short_episodes_never_sampled():
    H = 4
    lengths = (6, 3, 10)  # 7, 4 (< H+1: stored, never sampled) and 11 entries
    buf = filled(lengths=lengths, horizon=H)
    assert buf.num_episodes == 3
    assert buf.num_windows == (7 - H) + 0 + (11 - H)
    s = buf.sample(20000, generator=torch.Generator().manual_seed(1))
    eps = s["obs"][0, :, 0].long()
    starts = s["obs"][0, :, 1].long()
    assert 1 not in eps.tolist()
    keys = eps * 100 + starts
    uniq, counts = torch.unique(keys, return_counts=True)
    expected = {e * 100 + st for e, L in enumerate(lengths) for st in range(max(0, L + 1 - H))}
    assert set(uniq.tolist()) == expected
    freq = counts.float() / counts.sum()
    assert torch.all((freq - 1 / len(expected)).abs() < 0.02)


def test_termination_flags_and_filler_entry():
    buf = filled(lengths=(10, 12), horizon=3)
    ep1 = buf.get_episode(1)
    assert ep1["terminated"].tolist() == [False] * 12 + [True]
    for ep in (0, 1):
        e = buf.get_episode(ep)
        assert torch.all(e["action"][0] == 0) and e["reward"][0] == 0
    s = buf.sample(2000)
    ep = s["obs"][1:, :, 0]
    fr = s["obs"][1:, :, 1]
    want = (ep == 1) & (fr == 12)
    assert torch.equal(s["terminated"][..., 0] > 0, want)


def test_eviction_fifo_and_wrap():
    buf = ReplayBuffer(100, O, A, 2, 32, seed=0)
    live = {}
    for ep in range(12):
        steps = 20 + (ep % 3) * 5  # 21, 26, 31 entries
        buf.add_episode(*make_episode(ep, steps)[:3], task=ep % 3)
        live[ep] = steps
        # FIFO: the live episodes are always the most recent ones
        ids = [int(buf.get_episode(i)["obs"][0, 0]) for i in range(buf.num_episodes)]
        assert ids == list(range(ep - len(ids) + 1, ep + 1))
        assert buf.num_entries <= 100
        assert buf.num_steps == sum(live[i] for i in ids)
        check_windows(buf.sample(128), 2, {i: live[i] for i in ids})
    assert buf.num_episodes < 12


def test_bad_input_errors():
    buf = ReplayBuffer(50, O, A, 3, 4)
    o, a, r, _ = make_episode(0, 10)
    with pytest.raises(ValueError, match="obs_dim"):
        buf.add_episode(np.zeros((11, 5)), a, r)
    with pytest.raises(ValueError, match="action_dim"):
        buf.add_episode(o, np.zeros((11, 4)), r)
    with pytest.raises(ValueError, match="lengths differ"):
        buf.add_episode(o, a[:-1], r)
    bad = r.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match="entry 5"):
        buf.add_episode(o, a, bad)
    with pytest.raises(ValueError, match="capacity"):
        buf.add_episode(*make_episode(1, 60)[:3])
    with pytest.raises(RuntimeError, match="horizon"):
        buf.sample()
    buf.add_episode(*make_episode(2, 2)[:3])  # stored, never sampled
    assert buf.num_episodes == 1
    with pytest.raises(RuntimeError, match="horizon"):
        buf.sample()
    with pytest.raises(ValueError):
        ReplayBuffer(0, O, A, 3, 4)


def test_bulk_add_matches_per_episode_add():
    lengths = [15, 22, 9, 30]
    eps = [make_episode(i, L, terminate=i == 2) for i, L in enumerate(lengths)]
    a = ReplayBuffer(200, O, A, 3, 8, seed=3)
    for i, (o, act, r, t) in enumerate(eps):
        a.add_episode(o, act, r, t, task=i)
    b = ReplayBuffer(200, O, A, 3, 8, seed=3)
    b.add_episodes_from_arrays(np.concatenate([e[0] for e in eps]), np.concatenate([e[1] for e in eps]),
                               np.concatenate([e[2] for e in eps]), np.concatenate([e[3] for e in eps]),
                               episode_lengths=[L + 1 for L in lengths], tasks=[0, 1, 2, 3])
    sa, sb = a.state_dict(), b.state_dict()
    for k in ("obs", "action", "reward", "terminated", "episode_lengths", "episode_tasks"):
        assert torch.equal(sa[k], sb[k]), k
    # bulk add larger than capacity keeps the newest episodes
    c = ReplayBuffer(60, O, A, 3, 8)
    c.add_episodes_from_arrays(np.concatenate([e[0] for e in eps]), np.concatenate([e[1] for e in eps]),
                               np.concatenate([e[2] for e in eps]), None, episode_lengths=[L + 1 for L in lengths])
    assert [int(c.get_episode(i)["obs"][0, 0]) for i in range(c.num_episodes)] == [2, 3]
    # batched (E, T+1, ...) layout like a TD-MPC2 chunk
    d = ReplayBuffer(200, O, A, 3, 8)
    eq = [make_episode(i, 10) for i in range(4)]
    d.add_episodes_from_arrays(np.stack([e[0] for e in eq]), np.stack([e[1] for e in eq]),
                               np.stack([e[2] for e in eq]), None, tasks=np.arange(4))
    assert d.num_episodes == 4 and d.num_steps == 40
    s = d.sample(100)
    assert torch.equal(s["task"], s["obs"][0, :, 0].long())


def test_save_load_round_trip(tmp_path):
    buf = filled(capacity=150, lengths=(20, 35, 50, 3, 41, 30), seed=7)  # some evicted/wrapped
    path = buf.save(tmp_path / "ckpt")
    assert path.name == "replay_buffer.safetensors" and (tmp_path / "ckpt" / "replay_buffer.json").exists()
    assert not [p for p in os.listdir(tmp_path / "ckpt") if p.endswith(".tmp")]
    other = ReplayBuffer(150, O, A, 4, 64, seed=123)
    other.load(tmp_path / "ckpt")
    assert other.num_episodes == buf.num_episodes and other.num_steps == buf.num_steps
    for k in ("obs", "action", "reward", "terminated", "episode_lengths", "episode_tasks"):
        assert torch.equal(buf.state_dict()[k], other.state_dict()[k])
    s1, s2 = buf.sample(), other.sample()  # the RNG state is restored too
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    rebuilt = ReplayBuffer.from_saved(tmp_path / "ckpt")
    assert rebuilt.capacity == 150 and rebuilt.num_steps == buf.num_steps
    # single-file form + smaller capacity keeps the newest episodes
    buf.save(tmp_path / "b.safetensors")
    small = ReplayBuffer(60, O, A, 4, 8).load(tmp_path / "b.safetensors")
    assert small.num_entries <= 60
    assert torch.equal(small.get_episode(small.num_episodes - 1)["obs"],
                       buf.get_episode(buf.num_episodes - 1)["obs"])
    with pytest.raises(ValueError, match="obs_dim"):
        ReplayBuffer(150, O + 1, A, 4, 8).load(tmp_path / "ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk"):
        ReplayBuffer(150, O, A, 4, 8).load(tmp_path / "junk.safetensors")


def test_seeded_sampling_is_deterministic():
    a, b = filled(seed=5), filled(seed=5)
    sa, sb = a.sample(), b.sample()
    for k in sa:
        assert torch.equal(sa[k], sb[k])
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(a.sample(generator=g1)["obs"], b.sample(generator=g2)["obs"])


def test_sample_mixed():
    off = filled(lengths=(30, 30), seed=1)
    on = ReplayBuffer(500, O, A, 4, 64, seed=2)
    for ep in (100, 101):
        on.add_episode(*make_episode(ep, 25)[:3], task=ep % 3)
    s = sample_mixed([off, on], [0.75, 0.25], 64)
    assert s["obs"].shape == (5, 64, O) and s["task"].shape == (64,)
    src = s["obs"][0, :, 0]
    assert int((src >= 100).sum()) == 16 and torch.all(src[:48] < 100)
    assert torch.all(sample_mixed([off, on], [0, 1], 10)["obs"][0, :, 0] >= 100)
    s = sample_mixed([off, on], [1, 1], 7)
    assert s["action"].shape == (4, 7, A)
    with pytest.raises(ValueError):
        sample_mixed([off, ReplayBuffer(100, O, A, 2, 4)], [1, 1], 8)


def test_episode_recorder_single_and_batched():
    rec = EpisodeRecorder(O, A)
    rec.start(np.zeros(O))
    for t in range(1, 6):
        rec.add(np.full(A, t), float(t), np.full(O, t), terminated=(t == 5))
    ep = rec.finish()
    assert ep["obs"].shape == (6, O) and ep["action"].shape == (6, A) and ep["reward"].shape == (6,)
    assert ep["action"][0].tolist() == [0, 0] and ep["reward"][0] == 0
    assert ep["terminated"].tolist() == [False] * 5 + [True]
    buf = ReplayBuffer(100, O, A, 2, 4)
    buf.add_episode(**ep, task=1)
    assert buf.num_steps == 5

    vrec = EpisodeRecorder(O, A, num_envs=3)
    vrec.start(np.zeros((3, O)))
    for t in range(1, 5):
        vrec.add(np.ones((3, A)) * t, np.arange(3) + t, np.ones((3, O)) * t, terminated=np.array([0, t == 2, 0]))
    eps = vrec.finish_episodes()
    assert [len(e["obs"]) for e in eps] == [5, 3, 5]
    assert eps[1]["terminated"].tolist() == [False, False, True]
    assert eps[2]["reward"].tolist() == [0, 3, 4, 5, 6]
    for i, e in enumerate(eps):
        buf.add_episode(**e, task=i)
    assert buf.num_episodes == 4
    with pytest.raises(ValueError, match="shape"):
        vrec.start(np.zeros(O))


def test_sampling_is_one_vectorised_gather():
    # 10k-window batch from a 100k-entry buffer: prints the time, asserts only correctness
    buf = ReplayBuffer(100_000, 24, 6, 3, 256, seed=0)
    n_eps, steps = 190, 500
    obs = torch.randn(n_eps, steps + 1, 24)
    obs[..., 0] = torch.arange(n_eps, dtype=torch.float32)[:, None]
    buf.add_episodes_from_arrays(obs, torch.randn(n_eps, steps + 1, 6), torch.randn(n_eps, steps + 1))
    t0 = time.perf_counter()
    s = buf.sample(10_000)
    dt = time.perf_counter() - t0
    print(f"sample(10_000) with H=3 took {dt * 1e3:.1f} ms")
    assert s["obs"].shape == (4, 10_000, 24)
    assert torch.all(s["obs"][..., 0] == s["obs"][:1, :, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_storage():
    buf = filled(device="cuda")
    s = buf.sample()
    assert all(v.device.type == "cuda" for v in s.values())
    check_windows({k: v.cpu() for k, v in s.items()}, 4, dict(enumerate((20, 35, 50, 3, 41))))
