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
from mlx_train.data import ChatData, JsonlSource
from mlx_train.datagen import write_all
from mlx_train.distributed import World
from mlx_train.forward import forward
from mlx_train.heldout import split_indices
from mlx_train.model import build_model, model_config
from mlx_train.packing import (
    GroupedPairs,
    PackedChat,
    group_by_length,
    make_dataset,
    pack,
    segment_mask,
)
from mlx_train.stages import lm_loss
from mlx_train.step import make_step
from mlx_train.tokenizer import Tok, render_chat, train_tokenizer
from mlx_train.trainer import Position, epoch_plan, evaluate, micro_batches

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

def layout(packed: PackedChat, items) -> list[list[int]]:
    """The conversations (sample indices) of each row ``packed.collate(items)`` makes."""
    samples = [i for item in items for i in item]
    return [[samples[k] for k in row] for row in pack([len(packed.rows[i][0]) for i in samples], capacity=SEQ + 1)]


def test_pack_fills_the_fewest_rows_evenly_and_places_every_sample_once():
    lengths = [5, 9, 3, 7, 2, 10, 1, 4]                   # 41 tokens: 5 rows of 10 at least
    rows = pack(lengths, capacity=10)
    assert rows == [[5], [1], [3, 6], [0, 4], [2, 7]]      # longest first into the row with most room
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert pack([6, 6, 6], capacity=10) == [[0], [1], [2]]   # 18 tokens, but two rows can't hold them
    assert pack([3, 3, 3], capacity=10) == [[0, 1, 2]] and pack([], capacity=10) == []
    with pytest.raises(ValueError, match="11 tokens"):
        pack([2, 11], capacity=10)


def test_packed_batch_keeps_every_token_and_weight_of_each_conversation(files, tok):
    packed = dataset("r1", files, tok, packing=True)
    order = split_indices(len(packed))[0]
    plan = packed.plan(order, batch_size=16)
    plain = [list(order[b * 16:(b + 1) * 16]) for b in range(len(order) // 16)]
    assert [[i for (i,) in b] for b in plan] == plain              # the batches of unpacked training
    rows = layout(packed, plan[0])
    assert 1 < len(rows) < 16 and any(len(row) > 2 for row in rows)
    batch = packed.collate(plan[0])
    L = batch["weights"].shape[1]
    assert batch["tokens"].shape == (len(rows), L + 1) and batch["segments"].shape == (len(rows), L)
    assert L < packed.collate([i for (i,) in plan[0]])["weights"].shape[1] * 16 / len(rows)   # less padding
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
    items = packed.plan(split_indices(len(packed))[0], batch_size=12)[0]
    rows = layout(packed, items)
    batch = packed.collate(items)
    logits = forward(model, mx.array(batch["tokens"][:, :-1]), mx.array(batch["segments"]))
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
    items = packed.plan(split_indices(len(packed))[0], batch_size=12)[0]
    samples = [i for (i,) in items]
    as_rows = {k: mx.array(v) for k, v in packed.collate(items).items()}
    one_each = {k: mx.array(v) for k, v in packed.collate(samples).items()}       # unpacked
    assert as_rows["tokens"].shape[0] < len(samples) and "segments" not in one_each
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


def test_each_rank_packs_its_own_conversations_of_the_global_batch(files, tok):
    packed = dataset("sft", files, tok, packing=True)
    plan = epoch_plan(packed, len(packed), batch_size=12, seed=0, epoch=0)
    ranks = [World(rank=r, size=2) for r in range(2)]
    shares = [w.shard(plan[0]) for w in ranks]
    assert [i for share in shares for (i,) in share] == [i for (i,) in plan[0]]    # disjoint, all of it
    for share in shares:
        part, alone = packed.collate(share), packed.collate([i for (i,) in share])
        assert part["tokens"].shape[0] < len(share)
        assert int(part["real_tokens"].sum()) == int(alone["real_tokens"].sum())
        kept = [sorted(b["weights"][b["weights"] > 0].tolist()) for b in (part, alone)]
        assert kept[0] == kept[1]


# ---- real runs ----

@pytest.mark.parametrize("task", ["sft", "r1"])
def test_packed_run_takes_the_same_steps_as_unpacked_and_resumes_exactly(tmp_path, files, task):
    base = ["--task", task, "--data_path", str(files[task]), "--run_name", "r", "--preset", "tiny",
            "--hidden_size", "64", "--num_heads", "4", "--intermediate_size", "128", "--seq_len", "256",
            "--vocab_size", "400", "--batch_size", "8", "--warmup_steps", "2", "--log_interval", "1",
            "--eval_interval", "100", "--eval_batches", "1", "--sample_tokens", "0", "--epochs", "1"]
    assert train.main([*base, "--no_packing", "--out_dir", str(tmp_path / "plain"),
                       "--tensorboard_dir", str(tmp_path / "tb_plain")]) == 0
    assert train.main([*base, "--packing", "--out_dir", str(tmp_path / "packed"), "--save_interval", "3",
                       "--keep_last", "99", "--tensorboard_dir", str(tmp_path / "tb")]) == 0
    plain_state = json.loads((tmp_path / "plain" / "r" / _last(tmp_path / "plain" / "r") /
                              "trainer_state.json").read_text())
    last = _last(tmp_path / "packed" / "r")
    state = json.loads((tmp_path / "packed" / "r" / last / "trainer_state.json").read_text())
    assert {k: state[k] for k in ("step", "epoch", "batch", "tokens_seen")} == \
        {k: plain_state[k] for k in ("step", "epoch", "batch", "tokens_seen")}
    assert state["step"] >= 6
    # the same batches, the same updates: the curves agree (a leak or a lost weight parts them)
    full, plain = _scalars(tmp_path / "tb" / "r"), _scalars(tmp_path / "tb_plain" / "r")
    assert sorted(full["train/loss"]) == sorted(plain["train/loss"])
    for s, loss in plain["train/loss"].items():
        assert full["train/loss"][s] == pytest.approx(loss, rel=1e-3), s

    # killed after step 3: the resumed run takes the same packed batches
    for ckpt in sorted((tmp_path / "packed" / "r").glob("step_*"))[1:]:
        shutil.rmtree(ckpt)
    assert train.main([*base, "--packing", "--out_dir", str(tmp_path / "packed"), "--resume",
                       "--tensorboard_dir", str(tmp_path / "tb2")]) == 0
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


def test_packing_is_on_by_default_and_off_by_flag_or_environment():
    """On by default: the same batches and updates on fewer padded positions (see above)."""
    from mlx_train.config import build_parser, resolve_config

    base = ["--task", "sft", "--data_path", "x.jsonl"]
    assert resolve_config(base, env={}).packing is True
    assert resolve_config([*base, "--no_packing"], env={}).packing is False
    assert resolve_config(base, env={"MLX_TRAIN_PACKING": "0"}).packing is False
    assert resolve_config([*base, "--packing"], env={"MLX_TRAIN_PACKING": "0"}).packing is True
    assert "--no_packing" in build_parser().format_help()
