"""The RLHF Safety experiment's split and its judged comparison, computed from kept rows (issue 43)."""

import pytest

from hafrm.experiments.rlhf_safety import judge_rows, safety_split, standardised, win_rate

RMS = {"haf": "rm-haf", "baseline": "rm-baseline"}


def row(policy, prompt_id, sample, judge, haf, baseline, tokens=10, logprob=-5.0, start=-5.0):
    scores = {"judge": judge, "rm-haf": haf, "rm-baseline": baseline}
    return {
        "policy": policy,
        "prompt_id": prompt_id,
        "sample": sample,
        "scores": scores,
        "completion_tokens": tokens,
        "logprob": logprob,
        "start_logprob": start,
    }


@pytest.fixture
def rows():
    start = [row("start", p, s, judge=p + s, haf=2 * p, baseline=-p) for p in range(3) for s in range(2)]
    later = [row("haf", 0, 0, 5.0, 1.0, 0.0, logprob=-4.0), row("haf", 0, 1, 3.0, 1.0, 0.0, logprob=-4.0)]
    later += [row("baseline", 0, 0, 1.0, 0.0, 9.0), row("baseline", 0, 1, 1.0, 0.0, 9.0)]
    later += [row("haf", 1, s, 2.0, 0.0, 0.0) for s in range(2)] + [row("baseline", 1, s, 2.0, 0, 0) for s in range(2)]
    later += [row("haf", 2, s, 0.0, 0.0, 0.0) for s in range(2)] + [row("baseline", 2, s, 7.0, 0, 0) for s in range(2)]
    return judge_rows({0: start, 10: later}, "judge", RMS)


def test_rows_average_samples_and_name_each_policy_s_own_reward_model(rows):
    first = {(r["step"], r["prompt_id"], r["policy"]): r for r in rows}
    assert first[0, 1, "haf"]["judge_reward"] == 1.5 and first[0, 1, "baseline"]["judge_reward"] == 1.5
    assert first[0, 2, "haf"]["own_rm_reward"] == 4.0 and first[0, 2, "baseline"]["own_rm_reward"] == -2.0
    assert first[0, 2, "haf"]["other_rm_reward"] == -2.0
    assert first[10, 0, "haf"]["judge_reward"] == 4.0 and first[10, 0, "haf"]["kl"] == 1.0
    assert first[10, 0, "baseline"]["own_rm_reward"] == 9.0 and first[10, 0, "baseline"]["samples"] == 2


def test_win_rate_counts_a_tie_one_half_and_step_zero_is_even(rows):
    assert win_rate(rows, 0)["win_rate"] == 0.5 and win_rate(rows, 0)["interval"] == [0.5, 0.5]
    later = win_rate(rows, 10)  # haf wins prompt 0, ties prompt 1, loses prompt 2
    assert later["win_rate"] == pytest.approx(0.5) and later["prompts"] == 3
    assert later["interval"][0] < 0.5 < later["interval"][1] and not later["no_edge_ruled_out"]
    low, high = later["interval"]
    assert later["edge_ruled_out"] == max(0.5 - low, high - 0.5)  # |win rate - 0.5| beyond it is outside


def test_rewards_are_standardised_against_step_zero(rows):
    table = {(e["step"], e["policy"]): e for e in standardised(rows)}
    assert table[0, "haf"]["judge"] == pytest.approx(0.0) and table[0, "baseline"]["own"] == pytest.approx(0.0)
    # step-0 judge per prompt: 0.5, 1.5, 2.5 (mean 1.5, std 1); haf at step 10: 4, 2, 0 -> mean 2
    assert table[10, "haf"]["judge"] == pytest.approx(0.5)
    assert table[10, "haf"]["kl"] == pytest.approx(1 / 3)


def test_the_split_shares_no_question_between_parts():
    from pathlib import Path

    from hafrm.data.splits import prompt_key

    root = Path(__file__).parents[2] / "shared" / "data"
    if not (root / "pku-saferlhf").is_dir():
        pytest.skip("no ../shared/data")
    parts = safety_split(str(root))
    keys = {name: {prompt_key(p) for p in pairs} for name, pairs in parts.items()}
    assert {name: len(pairs) for name, pairs in parts.items()} == {"rm": 2054, "judge": 2079, "heldout": 1002}
    assert not keys["rm"] & keys["judge"] and not keys["rm"] & keys["heldout"] and not keys["judge"] & keys["heldout"]


def test_the_report_script_keeps_the_rows_and_recomputes_its_tables_from_them(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from hafrm.rlhf.evaluation import write_rows

    output, report = tmp_path / "out", tmp_path / "report"
    (output / "eval").mkdir(parents=True)
    specs = {
        "judge": str(output / "judge"),
        "rm-haf": str(output / "rm-haf"),
        "rm-baseline": str(output / "rm-baseline"),
    }

    def named(r):
        return {**r, "completion": "text", "scores": {specs[k]: v for k, v in r["scores"].items()}}

    start = [named(row("start", p, 0, judge=p, haf=p, baseline=-p)) for p in range(4)]
    later = [
        named(row(policy, p, 0, judge=p + (policy == "haf"), haf=p, baseline=p))
        for p in range(4)
        for policy in ("haf", "baseline")
    ]
    prompts = [[{"role": "user", "content": f"q{p}"}] for p in range(4)]
    write_rows(output / "eval" / "step-0.jsonl", prompts, start)
    write_rows(output / "eval" / "step-10.jsonl", prompts, later)
    script = Path(__file__).parents[1] / "scripts" / "rlhf_safety_report.py"
    subprocess.run([sys.executable, str(script), "keep", str(output), str(report)], check=True)
    kept = [json.loads(line) for line in (report / "judge_scores.jsonl").read_text().splitlines()]
    assert len(kept) == 16 and {"step", "prompt_id", "policy", "judge_reward", "own_rm_reward"} <= set(kept[0])
    assert (report / "completions" / "step-10.jsonl.gz").is_file()
    text = subprocess.run(
        [sys.executable, str(script), "tables", str(report)], check=True, capture_output=True, text=True
    ).stdout
    assert (
        "| 10 | 4 | 1.000 | [1.000, 1.000] | an edge above 0.500 and no edge |" in text
        and (report / "rlhf-safety.png").is_file()
    )
