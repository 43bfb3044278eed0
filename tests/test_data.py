"""Data loading: clear errors naming file and row, skip accounting, truncation, and the real data sets."""

import gzip
import json
from pathlib import Path

import pytest

from hafrm.data import DataError, PairEncoder, load_pairs, train_test_split
from hafrm.data.formats import parse_hh_dialogue

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # real data sets; tests skip without them

GOOD = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}


def test_missing_column_names_file_and_row(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"prompt": "Hi?", "chosen": "Hello!"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing column\(s\) 'rejected'"):
        load_pairs(str(path))


def test_malformed_json_names_line_or_is_counted(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, "{not json", GOOD])
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON"):
        load_pairs(str(path))
    pairs, report = load_pairs(str(path), on_error="skip")
    assert len(pairs) == 2 and report.rows_read == 3 and report.rows_skipped == 1


def test_ties_and_empty_responses_are_skipped_and_counted(tmp_path, write_jsonl):
    rows = [GOOD, {**GOOD, "rejected": GOOD["chosen"]}, {**GOOD, "chosen": "   "}, {**GOOD, "chosen": None}]
    pairs, report = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert len(pairs) == 1
    assert report.skipped == {"chosen identical to rejected": 1, "empty response": 2}
    assert report.rows_read == report.rows_used + report.rows_skipped == 4
    assert "d.jsonl:2" in report.summary()


def test_wrong_type_is_a_clear_error(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "chosen": 5}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: column 'chosen' must be a string"):
        load_pairs(str(path))


def test_unknown_schema_and_missing_file(tmp_path, write_jsonl):
    with pytest.raises(DataError, match="cannot tell the data format"):
        load_pairs(str(write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])))
    with pytest.raises(DataError, match="no such file"):
        load_pairs(str(tmp_path / "absent.jsonl"))


def test_column_map_renames(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q", "good": "A", "bad": "B"}])
    pairs, _ = load_pairs(str(path), column_map={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert pairs == [{"prompt": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"}]


def test_hh_dialogue_split():
    messages = parse_hh_dialogue("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine")
    assert messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how?"},
        {"role": "assistant", "content": "fine"},
    ]


def test_truncation_keeps_response_end_and_is_counted(tokenizer):
    encoder = PairEncoder(tokenizer, max_length=48)
    long_prompt = " ".join(f"word{i}" for i in range(300))
    pair = {"prompt": [{"role": "user", "content": long_prompt}], "chosen": "The end is here.", "rejected": "No."}
    encoded = encoder.encode_pair(pair)
    _, (full_chosen,) = encoder.split(pair["prompt"], [pair["chosen"]])
    assert encoded["truncated"]
    assert len(encoded["chosen_input_ids"]) <= 48 and len(encoded["rejected_input_ids"]) <= 48
    assert encoded["chosen_input_ids"][-len(full_chosen) :] == full_chosen  # the response survives whole
    assert "word299" in tokenizer.decode(encoded["chosen_input_ids"])  # the most recent prompt text stays
    long_response = {**pair, "chosen": " ".join(f"tok{i}" for i in range(300)) + " FINAL"}
    encoded = encoder.encode_pair(long_response)
    assert len(encoded["chosen_input_ids"]) == 48
    assert "FINAL" in tokenizer.decode(encoded["chosen_input_ids"][-6:])


def test_seeded_split_is_deterministic_and_disjoint():
    pairs = [{"prompt": [], "chosen": str(i), "rejected": "x"} for i in range(50)]
    train_a, test_a = train_test_split(pairs, 0.1, seed=0)
    train_b, test_b = train_test_split(pairs, 0.1, seed=0)
    assert test_a == test_b and len(test_a) == 5 and len(train_a) == 45
    assert not {p["chosen"] for p in test_a} & {p["chosen"] for p in train_a}


needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")


@needs_shared
@pytest.mark.parametrize(
    "relative, minimum",
    [
        ("hh-rlhf-harmless-base/test.jsonl.gz", 2200),
        ("hh-rlhf-helpful-base/helpful_train_sample.jsonl", 480),
        ("pku-saferlhf/PKU-Alignment_PKU-SafeRLHF_sample.jsonl", 450),
        ("pku-saferlhf/pku_seferlhf_realign_dpo_5k.json.gz", 5000),
        ("arena-human-preference-55k/lmsys_lmsys-arena-human-preference-55k_sample.jsonl", 200),
        ("reward-bench/reward_bench_format_sample.jsonl", 40),
    ],
)
def test_real_data_sets_load(relative, minimum):
    pairs, report = load_pairs(str(SHARED_DATA / relative))
    assert len(pairs) >= minimum
    assert report.rows_used + report.rows_skipped == report.rows_read
    assert all(p["chosen"] != p["rejected"] and p["chosen"].strip() for p in pairs)


@needs_shared
def test_pku_uses_safer_response_and_arena_drops_ties():
    rows = [json.loads(line) for line in open(SHARED_DATA / "pku-saferlhf/PKU-Alignment_PKU-SafeRLHF_sample.jsonl")]
    pairs, _ = load_pairs(str(SHARED_DATA / "pku-saferlhf/PKU-Alignment_PKU-SafeRLHF_sample.jsonl"), limit=5)
    assert pairs[0]["chosen"] == rows[0][f"response_{rows[0]['safer_response_id']}"]
    arena = SHARED_DATA / "arena-human-preference-55k/lmsys_lmsys-arena-human-preference-55k_sample.jsonl"
    ties = sum(json.loads(line)["winner_tie"] for line in open(arena))
    _, report = load_pairs(str(arena))
    assert ties > 0 and report.skipped["tie"] == ties


def test_alpaca_farm_preference_picks_the_chosen_output_and_appends_the_input(tmp_path, write_jsonl):
    """Rows in the schema of tatsu-lab/alpaca_farm alpaca_human_preference (the real file is hub-only)."""
    rows = [
        {"instruction": "Name a fruit.", "input": "", "output_1": "Apple.", "output_2": "A car.", "preference": 1},
        {"instruction": "Translate to French.", "input": "cat", "output_1": "dog", "output_2": "chat", "preference": 2},
        {"instruction": "Say hi.", "input": "", "output_1": "Hi", "output_2": "Hello", "preference": 3},
    ]
    pairs, report = load_pairs(str(write_jsonl(tmp_path / "ahp.jsonl", rows[:2])))
    assert report.rows_used == 2
    assert [(p["prompt"][0]["content"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("Name a fruit.", "Apple.", "A car."),
        ("Translate to French.\n\ncat", "chat", "dog"),
    ]
    with pytest.raises(DataError, match="ahp-bad.jsonl:1: 'preference' must be 1 or 2, got 3"):
        load_pairs(str(write_jsonl(tmp_path / "ahp-bad.jsonl", rows[2:])))


def test_gzip_and_non_utf8(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl\.gz:2: not valid UTF-8"):
        load_pairs(str(path))
