"""Deterministic bilingual (English/Chinese) training data for every stage, so that the whole
pipeline runs offline: arithmetic, unit conversions, simple facts, identity Q&A, preference
pairs and short reasoning traces. One seed always gives the same files.

Each family is a function ``(rng, zh) -> (question, answer, reasoning)``; the writers turn them
into pretrain text, SFT conversations, DPO pairs and R1 traces.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from tb_lazy.atomic import atomic_file, clean_leftovers

__all__ = ["FILES", "clean_stale", "write_all"]

FILES = {"pretrain": "pretrain.jsonl", "sft": "sft.jsonl", "dpo": "dpo.jsonl", "r1": "r1.jsonl"}
COUNTS = {"pretrain": 3000, "sft": 2400, "dpo": 1000, "r1": 1200}
STALE_AFTER = 600.0   # seconds: a temporary of ours untouched this long is a leftover, writer alive or not

NAME = "MiniMLX"
SYSTEM_EN = "You are MiniMLX, a small and helpful assistant."
SYSTEM_ZH = "你是 MiniMLX，一个小巧而乐于助人的助手。"

Item = tuple[str, str, str]          # question, answer, reasoning
Family = Callable[[random.Random, bool], Item]

_OPS = [("plus", "加", "+"), ("minus", "减", "-"), ("times", "乘以", "×")]


def _arith(rng: random.Random, zh: bool) -> Item:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    en, cn, sym = rng.choice(_OPS)
    if sym == "-" and b > a:
        a, b = b, a
    if sym == "×":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    value = a + b if sym == "+" else a - b if sym == "-" else a * b
    if zh:
        return (f"{a}{cn}{b}等于多少？", f"{a}{cn}{b}等于{value}。",
                f"计算 {a} {sym} {b}，结果是 {value}。")
    return (f"What is {a} {en} {b}?", f"{a} {en} {b} equals {value}.",
            f"Compute {a} {sym} {b}, which gives {value}.")


_UNITS = [("kilometers", "meters", "千米", "米", 1000), ("meters", "centimeters", "米", "厘米", 100),
          ("kilograms", "grams", "千克", "克", 1000), ("hours", "minutes", "小时", "分钟", 60),
          ("minutes", "seconds", "分钟", "秒", 60), ("days", "hours", "天", "小时", 24),
          ("weeks", "days", "周", "天", 7), ("liters", "milliliters", "升", "毫升", 1000)]


def _units(rng: random.Random, zh: bool) -> Item:
    big, small, big_zh, small_zh, factor = rng.choice(_UNITS)
    n = rng.randint(1, 9)
    if zh:
        return (f"{n}{big_zh}等于多少{small_zh}？", f"{n}{big_zh}等于{n * factor}{small_zh}。",
                f"1{big_zh}是{factor}{small_zh}，所以{n}{big_zh}是 {n} × {factor} = {n * factor}{small_zh}。")
    return (f"How many {small} are in {n} {big}?", f"{n} {big} is {n * factor} {small}.",
            f"One of the {big} is {factor} {small}, so {n} {big} is {n} × {factor} = {n * factor} {small}.")


_FACTS = [
    ("What is the capital of France?", "The capital of France is Paris.", "法国的首都是哪里？", "法国的首都是巴黎。"),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo.", "日本的首都是哪里？", "日本的首都是东京。"),
    ("What is the capital of China?", "The capital of China is Beijing.", "中国的首都是哪里？", "中国的首都是北京。"),
    ("Which planet is the largest?", "Jupiter is the largest planet in the solar system.",
     "太阳系中最大的行星是哪一颗？", "太阳系中最大的行星是木星。"),
    ("What is the chemical formula of water?", "The chemical formula of water is H2O.",
     "水的化学式是什么？", "水的化学式是H2O。"),
    ("How many days are in a week?", "There are seven days in a week.", "一周有几天？", "一周有七天。"),
    ("How many months are in a year?", "There are twelve months in a year.", "一年有几个月？", "一年有十二个月。"),
    ("At what temperature does water boil?", "Water boils at 100 degrees Celsius at sea level.",
     "水在多少度沸腾？", "在海平面上，水在100摄氏度沸腾。"),
    ("Which planet is called the Red Planet?", "Mars is called the Red Planet.",
     "哪颗行星被称为红色星球？", "火星被称为红色星球。"),
    ("How many sides does a triangle have?", "A triangle has three sides.", "三角形有几条边？", "三角形有三条边。"),
    ("What do plants need for photosynthesis?", "Plants need sunlight, water and carbon dioxide.",
     "光合作用需要什么？", "光合作用需要阳光、水和二氧化碳。"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth.",
     "地球上最大的海洋是什么？", "地球上最大的海洋是太平洋。"),
]


def _fact(rng: random.Random, zh: bool) -> Item:
    q_en, a_en, q_zh, a_zh = rng.choice(_FACTS)
    return (q_zh, a_zh, "这是一个常识问题，我记得答案。") if zh else \
        (q_en, a_en, "This is a general knowledge question and I remember the answer.")


_IDENTITY_EN = ["Who are you?", "What is your name?", "Introduce yourself.", "Are you an assistant?"]
_IDENTITY_ZH = ["你是谁？", "你叫什么名字？", "请介绍一下你自己。", "你是助手吗？"]


def _identity(rng: random.Random, zh: bool) -> Item:
    if zh:
        return (rng.choice(_IDENTITY_ZH), f"我是 {NAME}，一个用 MLX 训练的小型语言模型，很高兴为你服务。",
                "用户在问我的身份，我应该介绍自己。")
    return (rng.choice(_IDENTITY_EN),
            f"I am {NAME}, a small language model trained with MLX. I am happy to help you.",
            "The user asks who I am, so I should introduce myself.")


FAMILIES: tuple[Family, ...] = (_arith, _arith, _units, _fact, _identity)


def _item(rng: random.Random) -> tuple[Item, bool]:
    zh = rng.random() < 0.5
    return rng.choice(FAMILIES)(rng, zh), zh


def _pretrain(rng: random.Random) -> dict:
    parts = []
    for _ in range(rng.randint(3, 6)):
        (question, answer, _), zh = _item(rng)
        parts.append(answer if rng.random() < 0.6 else f"{question} {answer}")
    return {"text": " ".join(parts)}


def _chat(rng: random.Random, *, reasoning: bool) -> dict:
    messages = []
    (question, answer, why), zh = _item(rng)
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": SYSTEM_ZH if zh else SYSTEM_EN})
    if not reasoning and rng.random() < 0.15:     # some two-turn conversations
        (q0, a0, _), _ = _item(rng)
        messages += [{"role": "user", "content": q0}, {"role": "assistant", "content": a0}]
    reply = f"<think>{why}</think><answer>{answer}</answer>" if reasoning else answer
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return {"conversations": messages}


def _wrong(answer: str, rng: random.Random, zh: bool) -> str:
    digits = [c for c in answer if c.isdigit()]
    if digits and rng.random() < 0.7:
        last = max(i for i, c in enumerate(answer) if c.isdigit())
        return answer[:last] + str((int(answer[last]) + rng.randint(1, 8)) % 10) + answer[last + 1:]
    return rng.choice(["我不知道。", "这个问题太无聊了。", "你自己查吧。"]) if zh else \
        rng.choice(["I don't know.", "That question is boring.", "Look it up yourself."])


def _pair(rng: random.Random) -> dict:
    (question, answer, _), zh = _item(rng)
    prompt = [{"role": "user", "content": question}]
    return {"chosen": prompt + [{"role": "assistant", "content": answer}],
            "rejected": prompt + [{"role": "assistant", "content": _wrong(answer, rng, zh)}]}


def write_all(out_dir: Path, *, seed: int = 0, scale: float = 1.0) -> dict[str, Path]:
    """Write pretrain.jsonl, sft.jsonl, dpo.jsonl and r1.jsonl into ``out_dir``; return the paths.

    Each file is written to a temporary of its own and renamed into place, so runs writing the
    same folder at once all succeed (with the same bytes) and a reader never sees half a file.
    Temporaries left by interrupted runs are removed first (see `clean_stale`).
    """
    makers: dict[str, Callable[[random.Random], dict]] = {
        "pretrain": _pretrain, "sft": lambda r: _chat(r, reasoning=False), "dpo": _pair,
        "r1": lambda r: _chat(r, reasoning=True)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)    # a folder made meanwhile by another run is fine
    clean_stale(out_dir)
    paths = {}
    for offset, (task, make) in enumerate(makers.items()):
        rng = random.Random(seed * 1000 + offset)
        count = max(1, round(COUNTS[task] * scale))
        path = out_dir / FILES[task]
        with atomic_file(path) as f:
            for _ in range(count):
                f.write(json.dumps(make(rng), ensure_ascii=False) + "\n")
        paths[task] = path
    return paths


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove temporaries of data files in ``out_dir`` whose writer is gone or that were untouched
    for STALE_AFTER seconds (also the ``NAME.jsonl.tmp`` of earlier versions); return them."""
    names = re.compile("|".join(re.escape(name) for name in FILES.values()))
    removed = clean_leftovers(out_dir, names=names, max_age=STALE_AFTER)
    for name in FILES.values():
        legacy = out_dir / f"{name}.tmp"
        try:
            if time.time() - legacy.stat().st_mtime > STALE_AFTER:
                legacy.unlink(missing_ok=True)
                removed.append(legacy)
        except FileNotFoundError:
            pass
    return removed
