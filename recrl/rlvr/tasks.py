r"""Verifiable multi-step arithmetic with a checkable scratchpad, splits, scoring, prompting.

A problem is a left-nested expression such as ``((3+4)*2)-5``; its reference solution writes
one line per operation and a final answer line::

    3+4=7
    7*2=14
    14-5=9
    answer: 9

Every intermediate line can be checked, so a trace may reach the right answer through wrong
steps (a *flawed* trace). Rewards are binary on the final answer; malformed output scores 0
and is counted, never raised.

Step correctness of a trace with parsed steps :math:`s_1..s_n` against the reference steps
:math:`s^*_1..s^*_m`:

.. math:: \mathrm{SC} = \frac{|\{i \le \min(n, m) : s_i = s^*_i\}|}{\max(n, m)}

(a step is the tuple ``(a, op, b, a op b)``; an arithmetically wrong line never matches).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

OPS = ("+", "-", "*")
_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
# tolerant form: an equation anywhere in a line, unicode/letter operators, spaces;
# "Step 2: 7 × 2 = 14." is one step, decimals are not
_OP_CHARS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "x": "*", "X": "*",
             "·": "*"}
_STEP_ANY = re.compile(
    r"(?<![\d.])\(?\s*(-?\d+)\s*([+\-−–*×xX·])\s*(-?\d+)\s*\)?\s*=\s*(-?\d+)(?![\d.]*\d)")
_ANSWER = re.compile(r"(?:answer\s*:|####)\s*(-?\d+)", re.IGNORECASE)
Step = tuple[int, str, int, int]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One question with its reference scratchpad.

    Attributes:
      question: the expression, e.g. ``"((3+4)*2)-5"``.
      answer: its integer value.
      steps: reference steps ``(a, op, b, c)`` in evaluation order.
      solution: the reference trace text (step lines, then ``answer: N``).
    """

    question: str
    answer: int
    steps: tuple[Step, ...] = ()
    solution: str = ""


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def format_steps(steps: Sequence[Step], answer: int) -> str:
    """Scratchpad text: ``"a op b = c"`` lines then ``"answer: <answer>"``."""
    lines = [f"{a}{op}{b}={c}" for a, op, b, c in steps]
    return "\n".join([*lines, f"answer: {answer}"])


def make_problem(rng: random.Random, num_ops: int = 3, max_operand: int = 9,
                 max_value: int = 99) -> Problem:
    """Draws one left-nested problem with ``num_ops`` operations, values in ``[0, max_value]``.

    ``-`` is only used when the result stays >= 0 and ``*`` only when it stays <= max_value
    (otherwise ``+`` or ``-`` is drawn instead).
    """
    value = rng.randint(1, max_operand)
    expr, steps = str(value), []
    for k in range(num_ops):
        b = rng.randint(1, max_operand)
        op = rng.choice(OPS)
        if op == "*" and value * b > max_value:
            op = "-"
        if op == "-" and b > value:
            op = "+"
        if op == "+" and value + b > max_value:
            op = "-" if b <= value else "*"
            b = b if op == "-" else 1
        c = _apply(value, op, b)
        steps.append((value, op, b, c))
        expr = f"({expr}{op}{b})" if k < num_ops - 1 else f"{expr}{op}{b}"
        value = c
    return Problem(expr, value, tuple(steps), format_steps(steps, value))


class Splits(NamedTuple):
    """Pairwise-disjoint problem sets (by question text)."""

    train: list[Problem]
    demo: list[Problem]
    probe: list[Problem]
    eval: list[Problem]


def make_splits(n_train: int, n_demo: int, n_probe: int, n_eval: int, *, seed: int = 0,
                num_ops: Sequence[int] = (2, 3), max_operand: int = 9,
                train_at_most: bool = False) -> Splits:
    """Generates unique questions and deals them into train / demo / probe / eval.

    With ``train_at_most=True``, ``n_train`` is an upper bound: demo, probe and eval are
    filled first and train gets up to ``n_train`` of the remaining distinct questions (for
    a small question space, e.g. 889 distinct questions at 2 ops with operands <= 5).

    Raises:
      ValueError: if the generator cannot produce enough distinct questions.
    """
    rng = random.Random(seed)
    need = n_train + n_demo + n_probe + n_eval
    fixed = n_demo + n_probe + n_eval
    seen: dict[str, Problem] = {}
    tries = 0
    while len(seen) < need:
        tries += 1
        if tries > 50 * need + 1000:
            if train_at_most and len(seen) > fixed:
                break
            raise ValueError(f"only {len(seen)} distinct questions for {need} requested; "
                             "raise max_operand or num_ops")
        p = make_problem(rng, rng.choice(list(num_ops)), max_operand)
        seen.setdefault(p.question, p)
    probs = list(seen.values())
    rng.shuffle(probs)
    if train_at_most:
        a, b = n_demo, n_demo + n_probe
        return Splits(probs[fixed:fixed + n_train], probs[:a], probs[a:b], probs[b:fixed])
    a, b, c = n_train, n_train + n_demo, n_train + n_demo + n_probe
    return Splits(probs[:a], probs[a:b], probs[b:c], probs[c:need])


# ------------------------------------------------------------------------------- scoring


def extract_answer(text: str) -> int | None:
    """The integer after the last ``answer:`` (or ``####``) marker; None if there is none."""
    found = _ANSWER.findall(text or "")
    if not found:
        return None
    try:
        return int(found[-1])
    except ValueError:  # pragma: no cover - the regex only matches integers
        return None


def parse_steps(text: str, *, strict: bool = False) -> list[Step]:
    """Steps ``a op b = c`` of a trace, in order.

    Default (tolerant): every equation ``a op b = c`` found anywhere in a line, so
    ``"Step 1: 3 + 4 = 7."``, ``"7 × 2 = 14, then 14 - 5 = 9"``, ``"(3+4) = 7"`` and prose around an
    equation all parse; ``×``/``x``/``·`` read as ``*`` and ``−``/``–`` as ``-``.
    An equation with more than one operator (``3+4*2=11``) is not a step (it is skipped).
    ``strict=True``: only whole lines of the exact form (the previous parser).
    """
    out = []
    for line in (text or "").splitlines():
        if strict:
            m = _STEP.match(line)
            if m:
                out.append((int(m[1]), m[2], int(m[3]), int(m[4])))
            continue
        for m in _STEP_ANY.finditer(line):
            before = line[:m.start()].rstrip()
            if before.endswith(tuple(_OP_CHARS)) and not before.endswith(("x", "X")):
                continue  # part of a longer expression (3+4*2=11)
            out.append((int(m[1]), _OP_CHARS[m[2]], int(m[3]), int(m[4])))
    return out


def answer_reward(text: str, problem: Problem) -> float:
    """Binary verifiable reward: 1 if the extracted answer equals ``problem.answer``."""
    got = extract_answer(text)
    return float(got is not None and got == problem.answer)


def step_correctness(text: str, problem: Problem, *, strict: bool = False) -> float:
    r"""Fraction of reference steps reproduced in place (formula in the module docstring);
    ``strict`` selects the whole-line step parser (see :func:`parse_steps`)."""
    got = parse_steps(text, strict=strict)
    ref = list(problem.steps)
    denom = max(len(got), len(ref))
    if denom == 0:
        return 0.0
    hits = sum(1 for s, r in zip(got, ref, strict=False) if s == r and _apply(*s[:3]) == s[3])
    return hits / denom


class Scores(NamedTuple):
    """Scores of a batch of traces.

    Attributes:
      reward: float ``[B]`` binary answer rewards.
      step_correctness: float ``[B]``.
      malformed: bool ``[B]``: no answer could be extracted (reward 0).
    """

    reward: np.ndarray
    step_correctness: np.ndarray
    malformed: np.ndarray


def score_traces(texts: Sequence[str], problems: Sequence[Problem]) -> Scores:
    """Scores ``texts[i]`` against ``problems[i]``; never raises on malformed text."""
    if len(texts) != len(problems):
        raise ValueError(f"{len(texts)} traces for {len(problems)} problems")
    r = np.array([answer_reward(t, p) for t, p in zip(texts, problems, strict=True)], np.float32)
    step_sc = np.array([step_correctness(t, p) for t, p in zip(texts, problems, strict=True)],
                  np.float32)
    bad = np.array([extract_answer(t) is None for t in texts], bool)
    return Scores(r, step_sc, bad)


# ----------------------------------------------------------------------------- prompting


def format_example(question: str, solution: str) -> str:
    """One demonstration block ``"Q: <question>\\nA: <solution>\\n\\n"``."""
    return f"Q: {question}\nA: {solution}\n\n"


def format_prompt(question: str, demos: Sequence[Problem] = ()) -> str:
    """Prompt text: demonstration blocks, then ``"Q: <question>\\nA: "``."""
    return "".join(format_example(d.question, d.solution) for d in demos) + f"Q: {question}\nA: "


def encode_prompt(tok, question: str, demos: Sequence[Problem] = ()) -> list[int]:
    """Prompt ids (bos + :func:`format_prompt`); works for
    ``recrl.models.char_tokenizer.CharTokenizer`` and SmolLM2's ``models.Tokenizer``."""
    return tok.encode(format_prompt(question, demos), add_bos=tok.bos_id is not None)


def encode_solution(tok, solution: str) -> list[int]:
    """Completion ids of a solution, terminated by ``eos``."""
    return tok.encode(solution) + [tok.eos_id]


STOP_STRINGS = ("\n\n", "\nQ:")


def truncate_trace(text: str, stops: Sequence[str] = STOP_STRINGS) -> str:
    """``text`` up to the first stop string (a few-shot model that runs on into the next
    ``Q:`` block is cut where its own answer ends)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def decode_completion(tok, ids: Sequence[int] | np.ndarray, length: int) -> str:
    """Text of the first ``length`` generated ids (stop token dropped), truncated by
    :func:`truncate_trace`."""
    ids = [int(i) for i in np.asarray(ids)[:length] if int(i) != tok.eos_id]
    return truncate_trace(tok.decode(ids))


def scored_length(tok, ids: Sequence[int] | np.ndarray, length: int,
                  stops: Sequence[str] = STOP_STRINGS) -> int:
    """Number of generated tokens the scored text comes from: the shortest prefix of the first
    ``length`` ids whose text contains a stop string (that token ends the trace, as eos does),
    or ``length`` if none does. The training mask of a rollout ends there, so a policy that
    runs on into an invented next question is not trained on the run-on.
    """
    ids = [int(i) for i in np.asarray(ids)[:length]]
    text = lambda n: tok.decode([i for i in ids[:n] if i != tok.eos_id])
    if not any(s in text(len(ids)) for s in stops):
        return len(ids)
    lo, hi = 1, len(ids)  # smallest n whose text holds a stop string (monotone in n)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in text(mid) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ------------------------------------------------------------------------ reasoning-gym


def reasoning_gym_available() -> bool:
    """Whether ``reasoning_gym`` is importable."""
    try:
        import reasoning_gym  # noqa: F401
    except Exception:  # any import failure means "not available"
        return False
    return True


def reasoning_gym_problems(name: str, size: int, seed: int = 0) -> list[Problem]:
    """Problems from a reasoning-gym dataset (``basic_arithmetic``, ``chain_sum``,
    ``gsm_symbolic``). ``gsm_symbolic``'s ``metadata.answer_cot`` becomes the solution
    (its ``#### N`` line is rewritten to ``answer: N``); the others get ``answer: N``.
    Non-integer answers are skipped. Steps are empty (step correctness is built-in only).
    """
    try:
        import reasoning_gym
    except ImportError as e:
        from recrl._extras import missing

        raise missing("recrl.rlvr.tasks.reasoning_gym_problems", "rlvr", e) from e

    out = []
    for item in reasoning_gym.create_dataset(name, size=size, seed=seed):
        try:
            ans = int(float(str(item["answer"]).strip()))
        except ValueError:
            continue
        cot = (item.get("metadata") or {}).get("answer_cot")
        sol = (re.sub(r"####\s*(-?\d+)", r"answer: \1", cot.strip()) if cot
               else f"answer: {ans}")
        out.append(Problem(item["question"], ans, (), sol))
    return out
