"""Sequence packing (mlx_train.packing): rows, the block-diagonal mask, equivalence with
unpacked rows (logits, loss, gradients, a few dozen training steps), exact data positions, data
parallel sharding, and real packed runs. Real MLX on a tiny LLaMA, the bundled SFT/R1 data."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlx_train import train
from mlx_train.data import ChatData, JsonlSource, make_dataset, split_indices
from mlx_train.datagen import write_all
from mlx_train.distributed import World
from mlx_train.model import build_model, model_config
from mlx_train.packing import GroupedPairs, PackedChat, group_by_length, pack, packed_forward, segment_mask
from mlx_train.stages import lm_loss
from mlx_train.tokenizer import Tok, render_chat, train_tokenizer
from mlx_train.trainer import Position, epoch_plan, evaluate, make_step, micro_batches

SEQ = 256


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch):
    monkeypatch.setenv("TB_AUTO", "0")      # never start a TensorBoard from these tests


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("data"), seed=0, scale=0.1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory, files) -> Tok:
    records = JsonlSource(files["r1"], "r1").read_new() + JsonlSource(files["sft"], "sft").read_new()
    texts = [render_chat(r["conversations"]) for r in records]
    return train_tokenizer(texts, vocab_size=400, out_dir=tmp_path_factory.mktemp("tok"))


def dataset(task: str, files, tok: Tok, *, packing: bool, seq_len: int = SEQ):
    data = make_dataset(task, tok, seq_len, packing=packing)
    data.extend(JsonlSource(files[task], task).read_new())
    return data


def tiny_model(vocab: int, *, seed: int = 0) -> nn.Module:
    mx.random.seed(seed)
    dims = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    return build_model(model_config(dims, vocab_size=vocab, max_len=SEQ, eos_token_ids=[0]))


# ---- rows ----

def test_pack_is_first_fit_in_order_and_places_every_sample_once():
    lengths = [5, 9, 3, 7, 2, 10, 1, 4]
    rows = pack([6, 0, 1, 2, 3, 4, 5, 7], lengths, capacity=10)
    assert rows == [(6, 0, 2), (1,), (3, 4), (5,), (7,)]       # 2 joins the first row, 4 the third
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    # only the last open_rows rows take more: with one open row it is next fit
    assert pack([6, 0, 1, 2, 3, 4, 5, 7], lengths, capacity=10, open_rows=1) == \
        [(6, 0), (1,), (2, 3), (4,), (5,), (7,)]
    with pytest.raises(ValueError, match="11 tokens"):
        pack([0], [11], capacity=10)


def test_packed_batch_keeps_every_token_and_weight_of_each_conversation(files, tok):
    packed = dataset("r1", files, tok, packing=True)
    order = split_indices(len(packed))[0]
    plan = packed.plan(order, batch_size=4)
    assert all(len(b) == 4 for b in plan) and () in plan[-1]             # the last one filled up
    assert sorted(i for b in plan for row in b for i in row) == order    # nothing left out
    last = packed.collate(plan[-1])
    empty = [r for r, row in enumerate(plan[-1]) if not row]
    assert (last["weights"][empty] == 0).all() and (last["real_tokens"][empty] == 0).all()
    rows = plan[0]
    assert any(len(row) > 2 for row in rows)
    batch = packed.collate(rows)
    L = batch["weights"].shape[1]
    assert batch["tokens"].shape == (4, L + 1) and batch["segments"].shape == (4, L)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row, start=1):
            ids, w = packed.rows[i]
            n = len(ids)
            assert batch["tokens"][r, at:at + n].tolist() == ids
            assert batch["weights"][r, at:at + n - 1].tolist() == pytest.approx(w[1:])
            assert at + n - 1 >= L or batch["weights"][r, at + n - 1] == 0   # no target across
            assert (batch["segments"][r, at:min(at + n, L)] == s).all()
            at += n
        assert (batch["segments"][r, at:] == 0).all() and (batch["weights"][r, at:] == 0).all()
        assert batch["real_tokens"][r] == sum(len(packed.rows[i][0]) - 1 for i in row)
    assert (batch["weights"] == 10.0).any()                 # R1's tag weights kept


# ---- the mask and the model ----

def test_segment_mask_is_block_diagonal_and_causal():
    mask = np.array(segment_mask(mx.array([[1, 1, 2, 2, 2, 0]])))[0, 0]
    want = np.array([[1, 0, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0, 0],
                     [0, 0, 1, 0, 0, 0],
                     [0, 0, 1, 1, 0, 0],
                     [0, 0, 1, 1, 1, 0],
                     [0, 0, 0, 0, 0, 1]], bool)
    assert (mask == want).all()


def test_each_packed_conversation_gets_the_logits_it_gets_alone(files, tok):
    """RoPE depends on relative positions only: under the block-diagonal mask, a conversation at
    positions 40..75 of a row scores as it does at 0..35 alone."""
    packed = dataset("sft", files, tok, packing=True)
    model = tiny_model(tok.vocab_size)
    rows = packed.plan(split_indices(len(packed))[0], batch_size=2)[0]
    batch = packed.collate(rows)
    logits = packed_forward(model, mx.array(batch["tokens"][:, :-1]), mx.array(batch["segments"]))
    checked = 0
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ids = packed.rows[i][0]
            alone = model(mx.array(ids)[None])[0]                       # (n, V)
            got = logits[r, at:at + len(ids)][:alone.shape[0]]
            np.testing.assert_allclose(np.array(got), np.array(alone[:got.shape[0]]), atol=2e-5, rtol=1e-4)
            at += len(ids)
            checked += 1
    assert checked > 4
    # and the leak the mask prevents is real: plain causal attention over the row differs
    leaky = model(mx.array(batch["tokens"][:, :-1]))
    assert float(mx.abs(leaky - logits).max()) > 1e-2


def test_loss_and_gradients_equal_packed_and_unpacked(files, tok):
    packed = dataset("r1", files, tok, packing=True)
    model = tiny_model(tok.vocab_size)
    rows = packed.plan(split_indices(len(packed))[0], batch_size=4)[0]
    samples = [i for row in rows for i in row]
    as_rows = {k: mx.array(v) for k, v in packed.collate(rows).items()}
    one_each = {k: mx.array(v) for k, v in packed.collate(samples).items()}       # unpacked
    assert len(samples) > 8 and "segments" not in one_each
    assert int(as_rows["real_tokens"].sum()) == int(one_each["real_tokens"].sum())
    grad_fn = nn.value_and_grad(model, lm_loss)
    (loss_p, ntoks_p, _), grads_p = grad_fn(model, as_rows)
    (loss_u, ntoks_u, _), grads_u = grad_fn(model, one_each)
    assert ntoks_p.item() == ntoks_u.item()
    assert loss_p.item() == pytest.approx(loss_u.item(), rel=1e-5)
    for (name, gp), (_, gu) in zip(tree_flatten(grads_p), tree_flatten(grads_u), strict=True):
        np.testing.assert_allclose(np.array(gp), np.array(gu), atol=1e-6, rtol=1e-3, err_msg=name)


def test_training_packed_follows_unpacked_step_for_step(files, tok):
    """Thirty optimizer steps on the same conversations, packed into rows or one per row: the
    held-out loss curves agree (a leak across conversations or a lost weight would part them)."""
    packed = dataset("sft", files, tok, packing=True)
    order = split_indices(len(packed))[0]
    plan = packed.plan(order, batch_size=3) + packed.plan(order[::-1], batch_size=3)
    assert len(plan) >= 30
    curves = {}
    for kind in ("packed", "unpacked"):
        model = tiny_model(tok.vocab_size, seed=1)
        optimizer = optim.AdamW(learning_rate=3e-3)
        step = make_step(model, optimizer, lm_loss, accum_steps=1, grad_clip=1.0)
        curve = []
        for n, rows in enumerate(plan[:30], start=1):
            items = rows if kind == "packed" else [i for row in rows for i in row]
            batch = packed.collate(items)
            batch.pop("real_tokens")
            step({k: mx.array(v) for k, v in batch.items()}, None, True)
            mx.eval(model.state, optimizer.state)
            if n % 5 == 0:
                curve.append(evaluate(model, lm_loss, packed, batch_size=4, num_batches=3)["eval/loss"])
        curves[kind] = curve
    assert curves["packed"][-1] < curves["packed"][0] - 0.5          # it learns
    np.testing.assert_allclose(curves["packed"], curves["unpacked"], rtol=2e-3)


# ---- data position and data parallel ----

def test_resume_mid_epoch_takes_the_same_packed_batches(files, tok):
    packed = dataset("sft", files, tok, packing=True)
    through = micro_batches(packed, None, Position(), batch_size=4, seed=3, reload=False)
    n_epoch = len(epoch_plan(packed, len(packed), batch_size=4, seed=3, epoch=0))
    first = [next(through) for _ in range(n_epoch + 3)]          # into the second epoch
    for k in (2, n_epoch + 1):
        pos = Position(epoch=k // n_epoch, batch=k % n_epoch, epoch_samples=len(packed))
        again = micro_batches(packed, None, copy.copy(pos), batch_size=4, seed=3, reload=False)
        for want in first[k:k + 2]:
            got = next(again)
            for key in want:
                assert (got[key] == want[key]).all(), (k, key)
    # a different epoch packs a different order
    assert len({first[0]["tokens"].tobytes(), first[n_epoch]["tokens"].tobytes()}) == 2


def test_ranks_take_disjoint_rows_of_the_packed_global_batch(files, tok):
    packed = dataset("sft", files, tok, packing=True)
    plan = epoch_plan(packed, len(packed), batch_size=4, seed=0, epoch=0)
    ranks = [World(rank=r, size=2) for r in range(2)]
    whole = packed.collate(plan[0])
    parts = [packed.collate(w.shard(plan[0])) for w in ranks]
    assert [len(w.shard(plan[0])) for w in ranks] == [2, 2]
    assert sum(int(p["real_tokens"].sum()) for p in parts) == int(whole["real_tokens"].sum())
    L = whole["weights"].shape[1]
    stacked = np.concatenate([np.pad(p["weights"], ((0, 0), (0, L - p["weights"].shape[1]))) for p in parts])
    assert (stacked == whole["weights"]).all()


# ---- real runs ----

@pytest.mark.parametrize("task", ["sft", "r1"])
def test_packed_run_trains_fewer_steps_per_epoch_and_resumes_exactly(tmp_path, files, task, capsys):
    base = ["--task", task, "--data_path", str(files[task]), "--run_name", "r", "--preset", "tiny",
            "--hidden_size", "64", "--num_heads", "4", "--intermediate_size", "128", "--seq_len", "256",
            "--vocab_size", "400", "--batch_size", "4", "--warmup_steps", "2", "--log_interval", "1",
            "--eval_interval", "100", "--eval_batches", "1", "--sample_tokens", "0", "--epochs", "1"]
    assert train.main([*base, "--out_dir", str(tmp_path / "plain")]) == 0
    assert train.main([*base, "--packing", "--out_dir", str(tmp_path / "packed"), "--save_interval", "3",
                       "--keep_last", "9", "--tensorboard_dir", str(tmp_path / "tb")]) == 0
    plain_steps = json.loads((tmp_path / "plain" / "r" / _last(tmp_path / "plain" / "r") /
                              "trainer_state.json").read_text())
    last = _last(tmp_path / "packed" / "r")
    state = json.loads((tmp_path / "packed" / "r" / last / "trainer_state.json").read_text())
    assert state["step"] * 2 < plain_steps["step"]                  # one epoch in under half the steps
    assert state["tokens_seen"] == pytest.approx(plain_steps["tokens_seen"], rel=0.1)
    assert state["epoch"] == 0 and state["batch"] == state["step"]

    # killed after step 3: the resumed run takes the same packed batches (even when told
    # to pack: its data position counts packed batches)
    full = _scalars(tmp_path / "tb" / "r")
    for ckpt in sorted((tmp_path / "packed" / "r").glob("step_*"))[1:]:
        shutil.rmtree(ckpt)
    capsys.readouterr()
    assert train.main([*base, "--out_dir", str(tmp_path / "packed"), "--resume",
                       "--tensorboard_dir", str(tmp_path / "tb2")]) == 0
    assert "--resume: packing stays on as the run started" in capsys.readouterr().err
    resumed = _scalars(tmp_path / "tb2" / "r")
    assert sorted(resumed["train/loss"]) == list(range(4, state["step"] + 1))
    for s, loss in resumed["train/loss"].items():
        assert loss == pytest.approx(full["train/loss"][s], rel=1e-5), s
    assert resumed["train/tokens_seen"][state["step"]] == state["tokens_seen"]


def _last(folder: Path) -> str:
    return sorted(p.name for p in folder.glob("step_*"))[-1]


def _scalars(tbdir: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(tbdir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_dpo_groups_pairs_by_length_and_evaluation_stays_unpacked(files, tok):
    grouped = dataset("dpo", files, tok, packing=True)
    assert isinstance(grouped, GroupedPairs) and type(dataset("dpo", files, tok, packing=False)).__name__ == "PairData"
    order = split_indices(len(grouped))[0]
    plan = grouped.plan(order, batch_size=4)
    assert plan == grouped.plan(order, batch_size=4)                       # deterministic
    assert all(len(b) == 4 for b in plan) and len(plan) == len(order) // 4
    assert sorted(i for b in plan for i in b) == sorted(order[:len(plan) * 4])   # each once
    # less padding than consecutive samples of the same order
    shuffled = [order[b * 4:(b + 1) * 4] for b in range(len(order) // 4)]
    width = lambda batches: sum(grouped.collate(b)["weights"].size for b in batches)   # noqa: E731
    assert width(plan) < width(shuffled)
    # within a window the batches are sorted, then shuffled
    lengths = [5, 1, 4, 2, 8, 7, 3, 6, 9]
    batches = group_by_length([0, 1, 2, 3, 4, 5, 6, 7, 8], lengths, batch_size=2, window=2)
    assert sorted(map(sorted, batches[:2])) == [[0, 2], [1, 3]] and sorted(map(sorted, batches[2:])) == [[4, 5], [6, 7]]

    packed = dataset("sft", files, tok, packing=True)
    assert isinstance(packed, PackedChat)
    plain = dataset("sft", files, tok, packing=False)
    assert type(plain) is ChatData
    for key, value in plain.collate([0, 19, 39]).items():
        assert (packed.collate([0, 19, 39])[key] == value).all()


def test_packing_is_off_by_default_and_on_by_flag_or_environment():
    """Off by default: at the default --batch_size a packed epoch has ~8x fewer optimizer steps,
    and its held-out loss after one epoch was much worse (see mlx_train/README.md)."""
    from mlx_train.config import resolve_config

    base = ["--task", "sft", "--data_path", "x.jsonl"]
    assert resolve_config(base, env={}).packing is False
    assert resolve_config([*base, "--packing"], env={}).packing is True
    assert resolve_config(base, env={"MLX_TRAIN_PACKING": "1"}).packing is True
