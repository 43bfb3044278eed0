"""Prompt-disjoint splits."""

from hafrm.data.splits import prompt_key, split_by_prompt, without_prompts_of


def pair(question: str, answer: str) -> dict:
    return {"prompt": [{"role": "user", "content": question}], "chosen": answer, "rejected": "no"}


def test_split_by_prompt_keeps_each_question_on_one_side():
    pairs = [pair(f"Question {q}?", f"answer {a}") for q in range(20) for a in range(q % 4 + 1)]
    train, test = split_by_prompt(pairs, test_pairs=10, seed=3)
    assert len(train) + len(test) == len(pairs) and len(test) >= 10
    assert not {prompt_key(p) for p in train} & {prompt_key(p) for p in test}
    assert split_by_prompt(pairs, 10, seed=3) == (train, test)  # seeded
    assert split_by_prompt(pairs, 10, seed=4)[1] != test


def test_prompt_key_normalises_and_filters():
    assert prompt_key(pair("  How  are\nyou? ", "x")) == prompt_key(pair("how are you?", "y"))
    held_out = [pair("Q1", "a")]
    assert without_prompts_of([pair("q1", "b"), pair("Q2", "c")], held_out) == [pair("Q2", "c")]
