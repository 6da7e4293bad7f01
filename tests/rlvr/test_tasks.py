"""Built-in arithmetic: generation, answer extraction, step correctness, splits, tokenizers."""

import random

import numpy as np
import pytest

from recrl.models.char_tokenizer import CharTokenizer
from recrl.rlvr import tasks


def _eval_left_nested(question: str) -> int:
    # independent check: Python evaluates the parenthesised expression
    return int(eval(question, {"__builtins__": {}}))  # digits, + - * and parentheses only


def test_generated_problems_are_consistent():
    rng = random.Random(0)
    for _ in range(200):
        p = tasks.make_problem(rng, num_ops=rng.choice([1, 2, 3, 4]))
        assert set(p.question) <= set("0123456789+-*()")
        assert _eval_left_nested(p.question) == p.answer
        assert 0 <= p.answer <= 99
        for (a, op, b, c), nxt in zip(p.steps, p.steps[1:] + ((p.answer,),), strict=True):
            assert {"+": a + b, "-": a - b, "*": a * b}[op] == c
            assert nxt[0] == c  # each step continues from the previous result
        assert tasks.answer_reward(p.solution, p) == 1.0
        assert tasks.step_correctness(p.solution, p) == 1.0


def test_example_by_hand():
    p = tasks.Problem("((3+4)*2)-5", 9, ((3, "+", 4, 7), (7, "*", 2, 14), (14, "-", 5, 9)))
    good = "3+4=7\n7*2=14\n14-5=9\nanswer: 9"
    assert tasks.format_steps(p.steps, 9) == good
    assert tasks.step_correctness(good, p) == 1.0
    # flawed: right answer, one wrong step (7*2=15) -> 2 of 3 steps
    flawed = "3+4=7\n7*2=15\n14-5=9\nanswer: 9"
    assert tasks.answer_reward(flawed, p) == 1.0
    assert tasks.step_correctness(flawed, p) == pytest.approx(2 / 3)
    # skipped step: 2 lines, first matches, second misplaced -> 1 / max(2, 3)
    assert tasks.step_correctness("3+4=7\n14-5=9\nanswer: 9", p) == pytest.approx(1 / 3)
    # extra steps lower the score: 3 hits / 4 lines
    assert tasks.step_correctness(good + "\n9+0=9", p) == pytest.approx(3 / 4)
    # wrong answer, right steps
    assert tasks.answer_reward("3+4=7\n7*2=14\n14-5=9\nanswer: 8", p) == 0.0


@pytest.mark.parametrize("text", ["", "answer:", "answer: x", "blah\n\n", "7*=", "answer 9",
                                  "\x00\x01", "answer: 9999999999999999999999x"])
def test_malformed_outputs_never_crash(text):
    p = tasks.Problem("1+2", 3, ((1, "+", 2, 3),))
    s = tasks.score_traces([text], [p])
    assert s.reward.shape == (1,) and s.reward[0] in (0.0, 1.0)
    assert 0.0 <= s.step_correctness[0] <= 1.0


def test_extraction_and_counting():
    assert tasks.extract_answer("so answer: 12 ... answer: -4") == -4
    assert tasks.extract_answer("steps\n#### 17") == 17
    assert tasks.extract_answer("no marker 17") is None
    ps = [tasks.Problem("1+2", 3), tasks.Problem("2+2", 4), tasks.Problem("3+3", 6)]
    s = tasks.score_traces(["answer: 3", "garbage", "answer: 5"], ps)
    np.testing.assert_array_equal(s.reward, [1, 0, 0])
    np.testing.assert_array_equal(s.malformed, [False, True, False])
    with pytest.raises(ValueError):
        tasks.score_traces(["a"], ps)


def test_splits_are_disjoint_and_deterministic():
    splits = tasks.make_splits(60, 20, 10, 30, seed=3)
    sets = [{p.question for p in part} for part in splits]
    assert [len(s) for s in sets] == [60, 20, 10, 30]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not sets[i] & sets[j]
    assert tasks.make_splits(60, 20, 10, 30, seed=3) == splits
    with pytest.raises(ValueError, match="distinct"):
        tasks.make_splits(500, 0, 0, 0, num_ops=(1,), max_operand=3)


def test_splits_train_at_most_takes_what_the_question_space_holds():
    rng = random.Random(0)
    space = {tasks.make_problem(rng, 1, 3).question for _ in range(20000)}
    splits = tasks.make_splits(500, 2, 3, 1, seed=0, num_ops=(1,), max_operand=3,
                           train_at_most=True)
    sets = [{p.question for p in part} for part in splits]
    assert [len(s) for s in sets[1:]] == [2, 3, 1]
    assert len(sets[0]) == len(space) - 6 < 500
    assert set().union(*sets) == space
    assert sum(len(s) for s in sets) == len(space)  # disjoint
    small = tasks.make_splits(4, 2, 3, 1, seed=0, num_ops=(1,), max_operand=3,
                              train_at_most=True)
    assert len(small.train) == 4
    with pytest.raises(ValueError, match="distinct"):
        tasks.make_splits(500, 30, 0, 0, num_ops=(1,), max_operand=3, train_at_most=True)


def test_char_tokenizer_round_trip_and_prompts():
    tok = CharTokenizer()
    p = tasks.make_problem(random.Random(1))
    d = tasks.make_problem(random.Random(2))
    text = tasks.format_prompt(p.question, [d])
    assert text == f"Q: {d.question}\nA: {d.solution}\n\nQ: {p.question}\nA: "
    ids = tasks.encode_prompt(tok, p.question, [d])
    assert ids[0] == tok.bos_id and tok.decode(ids) == text
    sol = tasks.encode_solution(tok, p.solution)
    assert sol[-1] == tok.eos_id
    assert tasks.decode_completion(tok, sol + [0, 0], len(sol)) == p.solution
    assert max(ids) < tok.vocab_size
    run_on = tok.encode(p.solution + "\n\nQ: 1+1\nA: answer: 2")
    assert tasks.decode_completion(tok, run_on, len(run_on)) == p.solution
    # the training mask ends at the token that completes the stop string (like eos)
    assert tasks.scored_length(tok, run_on, len(run_on)) == len(p.solution) + 2
    single = tok.encode("answer: 3\nQ: 2+2")
    assert tasks.scored_length(tok, single, len(single)) == len("answer: 3\nQ:")
    assert tasks.scored_length(tok, sol + [0, 0], len(sol)) == len(sol)  # ends at eos
    assert tasks.scored_length(tok, run_on, 5) == 5  # no stop within the generated length


class _WordTokenizer:
    """Multi-character tokens, as BPE: the stop string can sit inside one token."""

    VOCAB = ("<eos>", "3+4=7", "\n", "\n\n", "answer: 7", "Q:", " 1+1", "7.\n\nQ")
    eos_id = 0

    def decode(self, ids):
        return "".join(self.VOCAB[i] for i in ids if i != self.eos_id)


def test_scored_length_with_multichar_tokens():
    tok = _WordTokenizer()
    assert tasks.scored_length(tok, [1, 2, 4, 3, 5, 6], 6) == 4  # "\n\n" is token 4
    assert tasks.scored_length(tok, [1, 2, 4, 2, 5, 6], 6) == 5  # "\n" + "Q:" completes "\nQ:"
    assert tasks.scored_length(tok, [1, 7, 6], 3) == 2  # stop inside one token: it is kept
    assert tasks.scored_length(tok, [1, 2, 4, 0], 4) == 4


# Hand-written outputs in the style SmolLM2-135M produces for these prompts (spaces around
# operators, "Step n:" prefixes, prose, unicode times, trailing periods, chained equations)
SMOL_STYLE = [
    ("3 + 4 = 7\n7 * 2 = 14\n14 - 5 = 9\nanswer: 9", [(3, "+", 4, 7), (7, "*", 2, 14),
                                                      (14, "-", 5, 9)]),
    ("Step 1: 3+4=7.\nStep 2: 7*2=14.\nStep 3: 14-5=9.\nanswer: 9",
     [(3, "+", 4, 7), (7, "*", 2, 14), (14, "-", 5, 9)]),
    ("First we add 3 + 4 = 7, then 7 × 2 = 14 and finally 14 − 5 = 9.\nanswer: 9",
     [(3, "+", 4, 7), (7, "*", 2, 14), (14, "-", 5, 9)]),
    ("(3+4) = 7\n7 x 2 = 15\n15-5 = 10\nanswer: 10", [(3, "+", 4, 7), (7, "*", 2, 15),
                                                     (15, "-", 5, 10)]),
    ("((3+4)*2)-5 = 9\nanswer: 9", []),
    ("3+4*2 = 11\nSo 11 - 2 = 9\nanswer: 9", [(11, "-", 2, 9)]),
    ("The answer is 9.\nanswer: 9", []),
    ("3.5 + 1 = 4.5\n2 + 2 = 4\nanswer: 4", [(2, "+", 2, 4)]),
]


@pytest.mark.parametrize("text,steps", SMOL_STYLE)
def test_tolerant_step_parser_on_realistic_outputs(text, steps):
    assert tasks.parse_steps(text) == steps


def test_tolerant_vs_strict_step_correctness():
    p = tasks.Problem("((3+4)*2)-5", 9, ((3, "+", 4, 7), (7, "*", 2, 14), (14, "-", 5, 9)))
    spaced = SMOL_STYLE[1][0]
    assert tasks.step_correctness(spaced, p) == 1.0
    assert tasks.step_correctness(spaced, p, strict=True) == 0.0  # the old whole-line parser
    prose = SMOL_STYLE[2][0]
    assert tasks.step_correctness(prose, p) == 1.0
    wrong = SMOL_STYLE[3][0]  # 7 x 2 = 15 is wrong, so is the step after it -> 1 of 3
    assert tasks.step_correctness(wrong, p) == pytest.approx(1 / 3)


@pytest.mark.skipif(not tasks.reasoning_gym_available(),
                    reason="reasoning-gym not installed (pip install reasoning-gym==0.1.25)")
@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum", "gsm_symbolic"])
def test_reasoning_gym_adapters(name):
    probs = tasks.reasoning_gym_problems(name, size=5, seed=0)
    assert probs
    for p in probs:
        assert tasks.answer_reward(p.solution, p) == 1.0
    if name == "gsm_symbolic":
        assert all("\n" in p.solution for p in probs)  # worked solutions, not bare answers
