"""Prompts for teacher distillation: a built-in deterministic generator, or a user's file.

The built-in generator mixes English and Chinese knowledge, logic and math questions
(arithmetic word problems, unit conversions, percentages, averages, sequences, primes,
comparison puzzles, syllogisms, clock times and simple facts). Most families are
parametric, so one seed yields thousands of distinct prompts, always in the same order:
an interrupted distillation run that restarts with the same seed sees the same sequence
and can skip what it already answered.

    >>> builtin_prompts(3, seed=0) == builtin_prompts(3, seed=0)
    True
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["PromptFileError", "builtin_prompts", "iter_builtin_prompts", "load_prompts_file"]


class PromptFileError(ValueError):
    """A prompts file that can't be read or holds no usable prompt."""


# ---------------------------------------------------------------------------------------------
# vocabulary

_NAMES_EN = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Ivy", "Jack",
             "Kate", "Leo", "Mia", "Noah", "Olivia", "Paul"]
_NAMES_ZH = ["小明", "小红", "小华", "小丽", "小刚", "小芳", "小强", "小军", "小美", "小东",
             "小雪", "小林"]
_ITEMS = [("apples", "个苹果"), ("pencils", "支铅笔"), ("books", "本书"), ("stickers", "张贴纸"),
          ("marbles", "颗弹珠"), ("cookies", "块饼干"), ("oranges", "个橙子"), ("cards", "张卡片")]
_GOODS = [("notebook", "本笔记本", "本"), ("pen", "支钢笔", "支"), ("cup of tea", "杯茶", "杯"),
          ("ticket", "张票", "张"), ("loaf of bread", "个面包", "个"), ("ball", "个球", "个")]
# (adjective EN, superlative EN, opposite superlative EN, comparative ZH, superlative ZH, opposite ZH)
_COMPARISONS = [
    ("taller", "tallest", "shortest", "高", "最高", "最矮"),
    ("older", "oldest", "youngest", "大", "年龄最大", "年龄最小"),
    ("faster", "fastest", "slowest", "快", "跑得最快", "跑得最慢"),
    ("heavier", "heaviest", "lightest", "重", "最重", "最轻"),
]
# (from EN, to EN, from ZH, to ZH, factor)
_UNITS = [
    ("kilometers", "meters", "千米", "米", 1000), ("meters", "centimeters", "米", "厘米", 100),
    ("kilograms", "grams", "千克", "克", 1000), ("hours", "minutes", "小时", "分钟", 60),
    ("minutes", "seconds", "分钟", "秒", 60), ("liters", "milliliters", "升", "毫升", 1000),
    ("days", "hours", "天", "小时", 24), ("weeks", "days", "周", "天", 7),
]
# (category EN, property EN, category ZH, property ZH) for syllogisms
_SYLLOGISMS = [
    ("cats", "mammals", "猫", "哺乳动物"), ("roses", "flowers", "玫瑰", "花"),
    ("squares", "rectangles", "正方形", "长方形"), ("sparrows", "birds", "麻雀", "鸟"),
    ("oaks", "trees", "橡树", "树"), ("violins", "instruments", "小提琴", "乐器"),
]
_FACTS_EN = [
    "What is the capital of France?", "What is the capital of Japan?",
    "What is the capital of Australia?", "What is the capital of Canada?",
    "What is the chemical symbol for gold?", "What is the chemical symbol for sodium?",
    "Which planet is known as the Red Planet?", "Which is the largest planet in the solar system?",
    "How many continents are there on Earth?", "What gas do plants absorb from the air?",
    "At what temperature does water boil at sea level, in degrees Celsius?",
    "How many sides does a hexagon have?", "What is the largest ocean on Earth?",
    "Who wrote 'Romeo and Juliet'?", "What is the freezing point of water in Fahrenheit?",
    "How many bones are in the adult human body?", "What is the speed of light in vacuum, roughly?",
    "Which organ pumps blood through the human body?", "What is H2O commonly called?",
    "How many minutes are in a day?",
]
_FACTS_ZH = [
    "中国的首都是哪里？", "太阳系中最大的行星是哪一颗？", "水的化学式是什么？",
    "一年有多少个月？", "地球上最长的河流是哪一条？", "人体最大的器官是什么？",
    "光合作用需要哪些条件？", "长城主要修建于哪个朝代？", "一个正方形有几条对称轴？",
    "月球绕地球一周大约需要多少天？", "金的化学符号是什么？", "声音在空气中传播得快还是在水中传播得快？",
    "一天有多少秒？", "三角形的内角和是多少度？", "《静夜思》的作者是谁？",
]

Generator = Callable[[random.Random, bool], str]


# ---------------------------------------------------------------------------------------------
# families: each takes (rng, zh) and returns one prompt


def _word_problem(rng: random.Random, zh: bool) -> str:
    a, b = rng.randint(3, 60), rng.randint(2, 40)
    c = rng.randint(1, a + b - 1)
    en_item, zh_item = rng.choice(_ITEMS)
    if zh:
        name = rng.choice(_NAMES_ZH)
        return f"{name}有{a}{zh_item}，又得到{b}{zh_item}，然后送给朋友{c}{zh_item}。{name}现在有几{zh_item}？"
    name = rng.choice(_NAMES_EN)
    return (f"{name} has {a} {en_item}, gets {b} more, then gives {c} to a friend. "
            f"How many {en_item} does {name} have now?")


def _shopping(rng: random.Random, zh: bool) -> str:
    price, n = rng.randint(2, 99), rng.randint(2, 15)
    paid = (price * n // 50 + 1) * 50
    en, zh_name, measure = rng.choice(_GOODS)
    if zh:
        return f"一{zh_name}{price}元，买{n}{measure}需要多少元？如果付{paid}元，应找回多少元？"
    return f"One {en} costs {price} yuan. How much do {n} of them cost, and how much change is left from {paid} yuan?"


def _travel(rng: random.Random, zh: bool) -> str:
    speed, hours = rng.choice([40, 45, 50, 60, 72, 80, 90, 100, 120]), rng.randint(2, 9)
    if rng.random() < 0.5:
        if zh:
            return f"一辆汽车以每小时{speed}千米的速度行驶{hours}小时，一共行驶了多少千米？"
        return f"A car drives at {speed} km/h for {hours} hours. How far does it travel?"
    distance = speed * hours
    if zh:
        return f"两地相距{distance}千米，一列火车每小时行驶{speed}千米，需要几小时到达？"
    return f"Two cities are {distance} km apart. A train goes {speed} km/h. How many hours does the trip take?"


def _unit_conversion(rng: random.Random, zh: bool) -> str:
    if rng.random() < 0.15:
        celsius = rng.randrange(-30, 105, 5)
        if zh:
            return f"{celsius}摄氏度等于多少华氏度？请写出计算过程。"
        return f"Convert {celsius} degrees Celsius to Fahrenheit and show the formula."
    en_from, en_to, zh_from, zh_to, _ = rng.choice(_UNITS)
    value = rng.choice([rng.randint(2, 500), round(rng.uniform(0.5, 50), 1)])
    if zh:
        return f"{value}{zh_from}等于多少{zh_to}？"
    return f"How many {en_to} are in {value} {en_from}?"


def _percentage(rng: random.Random, zh: bool) -> str:
    pct, base = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75]), rng.randint(4, 400) * 5
    if rng.random() < 0.5:
        if zh:
            return f"{base}的{pct}%是多少？"
        return f"What is {pct}% of {base}?"
    if zh:
        return f"一件衣服原价{base}元，打{(100 - pct) / 10:g}折（便宜{pct}%）后售价是多少元？"
    return f"A jacket costs {base} dollars and is {pct}% off. What is the sale price?"


def _average(rng: random.Random, zh: bool) -> str:
    values = [rng.randint(50, 100) for _ in range(rng.randint(3, 6))]
    listed = ", ".join(map(str, values))
    if zh:
        return f"某同学几次考试的成绩是{'、'.join(map(str, values))}，平均分是多少？"
    return f"What is the average of these scores: {listed}?"


def _sequence(rng: random.Random, zh: bool) -> str:
    start = rng.randint(1, 20)
    if rng.random() < 0.6:
        step = rng.randint(2, 12)
        terms = [start + i * step for i in range(5)]
    else:
        ratio = rng.randint(2, 4)
        terms = [start * ratio**i for i in range(5)]
    shown = ", ".join(map(str, terms))
    if zh:
        return f"找规律：{shown}，下一个数是多少？为什么？"
    return f"What number comes next in the sequence {shown}? Explain the pattern."


def _number_property(rng: random.Random, zh: bool) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        n = rng.randint(20, 500)
        return f"{n}是质数吗？请说明理由。" if zh else f"Is {n} a prime number? Explain why."
    a, b = rng.randint(6, 120), rng.randint(6, 120)
    if kind == 1:
        return f"{a}和{b}的最大公约数是多少？" if zh else f"What is the greatest common divisor of {a} and {b}?"
    return f"{a}和{b}的最小公倍数是多少？" if zh else f"What is the least common multiple of {a} and {b}?"


def _comparison(rng: random.Random, zh: bool) -> str:
    adj, most, least, zh_adj, zh_most, zh_least = rng.choice(_COMPARISONS)
    first_most = rng.random() < 0.5
    if zh:
        a, b, c = rng.sample(_NAMES_ZH, 3)
        ask = zh_most if first_most else zh_least
        return f"{a}比{b}{zh_adj}，{b}比{c}{zh_adj}。三人中谁{ask}？"
    a, b, c = rng.sample(_NAMES_EN, 3)
    ask = most if first_most else least
    return f"{a} is {adj} than {b}, and {b} is {adj} than {c}. Who is the {ask} of the three?"


def _syllogism(rng: random.Random, zh: bool) -> str:
    cat, prop, zh_cat, zh_prop = rng.choice(_SYLLOGISMS)
    label = rng.choice("ABCDEFGHJK")
    if rng.random() < 0.5:  # valid inference
        if zh:
            return f"所有{zh_cat}都是{zh_prop}，{label}是一种{zh_cat}。{label}一定是{zh_prop}吗？为什么？"
        return f"All {cat} are {prop}. {label} is one of the {cat}. Is {label} necessarily one of the {prop}? Why?"
    if zh:  # affirming the consequent
        return f"所有{zh_cat}都是{zh_prop}，{label}是一种{zh_prop}。{label}一定是{zh_cat}吗？为什么？"
    return f"All {cat} are {prop}. {label} is one of the {prop}. Is {label} necessarily one of the {cat}? Why?"


def _clock(rng: random.Random, zh: bool) -> str:
    hour, minute = rng.randint(7, 20), rng.randrange(0, 60, 5)
    duration = rng.randrange(25, 200, 5)
    if zh:
        return f"一场会议{hour}点{minute:02d}分开始，持续{duration}分钟，几点几分结束？"
    return f"A meeting starts at {hour}:{minute:02d} and lasts {duration} minutes. When does it end?"


def _age(rng: random.Random, zh: bool) -> str:
    age, gap, years = rng.randint(5, 40), rng.randint(2, 30), rng.randint(2, 15)
    if zh:
        name = rng.choice(_NAMES_ZH)
        return f"{name}今年{age}岁，妈妈比{name}大{gap + 18}岁。{years}年后妈妈多少岁？"
    name = rng.choice(_NAMES_EN)
    return (f"{name} is {age} years old and her uncle is {gap + 18} years older. "
            f"How old will the uncle be in {years} years?")


def _fact(rng: random.Random, zh: bool) -> str:
    return rng.choice(_FACTS_ZH if zh else _FACTS_EN)


# (family, weight): facts are finite, so they get a small weight
_FAMILIES: list[tuple[Generator, int]] = [
    (_word_problem, 4), (_shopping, 3), (_travel, 3), (_unit_conversion, 3), (_percentage, 3),
    (_average, 2), (_sequence, 3), (_number_property, 3), (_comparison, 3), (_syllogism, 2),
    (_clock, 2), (_age, 2), (_fact, 1),
]
_ZH_SHARE = 0.4
_MAX_DUPLICATES_IN_A_ROW = 10_000


# ---------------------------------------------------------------------------------------------
# public API


def iter_builtin_prompts(*, seed: int = 0) -> Iterator[str]:
    """Yield distinct built-in prompts forever (in practice), in an order fixed by `seed`."""
    rng = random.Random(seed)
    families = [family for family, _ in _FAMILIES]
    weights = [weight for _, weight in _FAMILIES]
    seen: set[str] = set()
    duplicates_in_a_row = 0
    while duplicates_in_a_row < _MAX_DUPLICATES_IN_A_ROW:
        family = rng.choices(families, weights)[0]
        prompt = family(rng, rng.random() < _ZH_SHARE)
        if prompt in seen:
            duplicates_in_a_row += 1
            continue
        duplicates_in_a_row = 0
        seen.add(prompt)
        yield prompt


def builtin_prompts(n: int, *, seed: int = 0) -> list[str]:
    """The first `n` distinct built-in prompts for `seed`."""
    prompts = []
    for prompt in iter_builtin_prompts(seed=seed):
        if len(prompts) >= n:
            break
        prompts.append(prompt)
    return prompts


def load_prompts_file(path: str | Path) -> list[str]:
    """Read prompts from `path`: one prompt per line, or JSONL lines like {"prompt": "..."}.

    Blank lines are skipped and repeated prompts kept once, in file order. A line that starts
    with "{" must be a JSON object with a non-empty string "prompt". Raises PromptFileError
    with the path (and line number) when the file can't be used.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
        raise PromptFileError(f"cannot read prompts file {path}: {reason}") from None
    prompts: dict[str, None] = {}  # ordered set
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise PromptFileError(f'{path}:{lineno}: expected {{"prompt": "<non-empty text>"}}')
            line = prompt.strip()
        prompts[line] = None
    if not prompts:
        raise PromptFileError(f"no prompts in {path}")
    return list(prompts)
