"""Best-of-N: recall against a judge computed by hand, sampling from a real (tiny) policy, and candidates files
read back (scores reused, bad files refused)."""

import json

import numpy as np
import pytest

from hafrm.cli.main import main
from hafrm.experiments.bestofn import candidate_scores, compare_selectors, sample_responses, top_k_recall


def test_top_k_recall_by_hand():
    selector = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.5, 0.6, 0.1]])  # picks 0, 2, 1
    judge = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])  # best: 0, 0, 1; second: 1, 1, 2
    assert top_k_recall(selector, judge, ks=(1, 2, 3)) == {
        "top1_recall": pytest.approx(2 / 3),
        "top2_recall": pytest.approx(2 / 3),
        "top3_recall": 1.0,
    }


def test_candidate_scores_are_prompts_by_n_and_need_equal_groups():
    longest = lambda prompts, responses: {"reward": [float(len(r)) for r in responses]}  # noqa: E731
    scores = candidate_scores(longest, ["p", "q"], [["a", "bbb", "cc"], ["dddd", "e", "ff"]])["reward"]
    assert scores.tolist() == [[1.0, 3.0, 2.0], [4.0, 1.0, 2.0]]
    assert top_k_recall(scores, scores) == {"top1_recall": 1.0, "top2_recall": 1.0}
    with pytest.raises(ValueError, match="same number of candidates"):
        candidate_scores(longest, ["p", "q"], [["a", "b"], ["c"]])


def test_selectors_are_compared_with_the_first_on_the_same_prompts():
    judge = np.array([[1.0, 0.0]] * 5)  # candidate 0 is the judge's best on every prompt
    reference = np.array([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 3)  # picks 0, 0, 1, 1, 1: right on 2 of 5
    other = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]])  # picks 0, 0, 0, 0, 1: right on 4 of 5
    summary = compare_selectors({"ref": reference, "other": other}, judge)
    assert summary["ref"]["top1_recall"] == pytest.approx(0.4) and "reference" not in summary["ref"]
    assert summary["ref"]["top1_recall_interval"] == pytest.approx([0.1176, 0.7693], abs=1e-4)  # Wilson, 2 of 5
    versus = summary["other"]["top1_recall_minus_reference"]
    assert summary["other"]["reference"] == "ref" and summary["other"]["top1_recall"] == pytest.approx(0.8)
    assert versus["difference"] == pytest.approx(0.4) and (versus["only_this"], versus["only_reference"]) == (2, 0)
    assert versus["mcnemar_p"] == pytest.approx(0.5)  # 2 discordant prompts, both one way: 2 * (1/2)^2
    assert 0.0 <= versus["interval"][0] <= 0.4 <= versus["interval"][1] <= 0.8
    top2 = summary["other"]["top2_recall_minus_reference"]  # with n = 2 every pick is in the judge's top 2
    assert summary["other"]["top2_recall"] == 1.0 and top2["difference"] == 0.0 and top2["mcnemar_p"] == 1.0


def test_sampling_gives_n_responses_per_prompt(tokenizer, tiny_causal_lm):
    policy = tiny_causal_lm(len(tokenizer)).eval()
    responses = sample_responses(policy, tokenizer, ["Hi", "Tell me a joke"], n=3, max_new_tokens=5)
    assert [len(group) for group in responses] == [3, 3]
    assert all(isinstance(r, str) for group in responses for r in group)


def write_candidates(path, scores, n=2):
    """A candidates file as `hafrm best-of-n --output` writes it: 3 prompts, n candidates, the given models' scores."""
    samples = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "candidates": [f"a{i}{j}" for j in range(n)], "scores": {}}
        for i in range(3)
    ]
    for spec, rows in scores.items():
        for sample, row in zip(samples, rows):
            sample["scores"][spec] = row
    path.write_text(json.dumps({"policy": "some/policy", "n": n, "seed": 5, "samples": samples}))
    return path


def test_saved_scores_are_reused_without_loading_any_model(tmp_path, capsys):
    """Every model here is gone (the folders never existed): with --candidates the comparison comes from the file."""
    candidates = write_candidates(
        tmp_path / "bon.json",
        {
            "gone/judge@reward": [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],  # best: 0, 1, 0
            "gone/baseline@reward": [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],  # picks 0, 0, 0: right on 2
            "gone/haf@reward": [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]],  # picks 0, 1, 1: right on 2, not the same 2
        },
    )
    output = tmp_path / "again.json"
    argv = ["best-of-n", "--candidates", str(candidates), "--judge", "gone/judge@reward", "--output", str(output)]
    assert main([*argv, "--selector", "gone/baseline@reward", "gone/haf@reward"]) == 0
    result = json.loads(output.read_text())
    assert result["policy"] == "some/policy" and result["seed"] == 5 and result["prompts"] == 3
    versus = result["selectors"]["gone/haf@reward"]["top1_recall_minus_reference"]
    assert result["selectors"]["gone/baseline@reward"]["top1_recall"] == pytest.approx(2 / 3)
    assert (versus["difference"], versus["only_this"], versus["only_reference"]) == (0.0, 1, 1)
    assert json.loads(candidates.read_text())["samples"] == result["samples"]  # nothing rescored, nothing lost
    assert json.loads(capsys.readouterr().out)["selectors"] == result["selectors"]
    assert main(argv) == 0  # the judge alone: no selector to compare, the samples kept
    assert json.loads(output.read_text())["selectors"] == {}
    assert json.loads(output.read_text())["samples"] == result["samples"]
    argv = ["best-of-n", "--candidates", str(candidates), "--selector", "gone/haf@reward", "--output", str(output)]
    assert main(argv) == 0  # no judge: nothing compared, every score kept
    assert "selectors" not in json.loads(output.read_text()) and json.loads(output.read_text())["scored"] == [
        "gone/judge@reward",
        "gone/baseline@reward",
        "gone/haf@reward",
    ]
    assert main(argv[:-2]) == 2  # no judge and no output: the run would be thrown away
    assert "without --judge nothing is compared: give --output" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda saved: saved["samples"][1]["scores"]["j"].append(0.5), "the scores of j must be 2 finite numbers"),
        (lambda saved: saved["samples"][2]["scores"].pop("s"), "sample 2: 'scores' must name the same models"),
        (lambda saved: saved["samples"][1]["candidates"].pop(), "sample 1: 'candidates' must be 2 strings"),
        (lambda saved: saved["samples"][0]["scores"]["j"].__setitem__(0, True), "of j must be 2 finite numbers"),
        (lambda saved: saved["samples"][0].update(prompt=7), "'prompt' must be a string or a list"),
        (lambda saved: saved.pop("samples"), "has no 'samples' list"),
    ],
)
def test_a_bad_candidates_file_fails_in_one_line(tmp_path, capsys, change, message):
    path = write_candidates(tmp_path / "bon.json", {"j": [[1.0, 0.0]] * 3, "s": [[0.0, 1.0]] * 3})
    saved = json.loads(path.read_text())
    change(saved)
    path.write_text(json.dumps(saved))
    assert main(["best-of-n", "--candidates", str(path), "--judge", "j", "--selector", "s"]) == 2
    assert message in capsys.readouterr().err


def test_non_finite_saved_scores_and_non_json_are_refused(tmp_path, capsys):
    path = tmp_path / "bon.json"
    path.write_text(write_candidates(path, {"j": [[1.0, 0.0]] * 3}).read_text().replace("0.0", "NaN", 1))
    assert main(["best-of-n", "--candidates", str(path), "--judge", "j", "--selector", "j"]) == 2
    assert "the scores of j must be 2 finite numbers" in capsys.readouterr().err
    path.write_text("{not json")
    assert main(["best-of-n", "--candidates", str(path), "--judge", "j", "--selector", "j"]) == 2
    assert "is not JSON" in capsys.readouterr().err


def test_sampling_options_are_refused_beside_candidates(tmp_path, capsys):
    path = write_candidates(tmp_path / "bon.json", {"j": [[1.0, 0.0]] * 3})
    assert main(["best-of-n", "--candidates", str(path), "--judge", "j", "--selector", "j", "--n", "4"]) == 2
    assert "--n: the candidates come from" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # the prompts come from one place or the other
        main(["best-of-n", "--candidates", str(path), "--prompts", "x.jsonl", "--judge", "j", "--selector", "j"])
    assert stopped.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_sampling_alone_records_the_candidates_and_the_settings(tiny_model_dir, tmp_path):
    """No judge and no selector: the candidates are sampled and kept for later runs, with how they were sampled."""
    from hafrm.io.defaults import DEFAULT_EVAL_DATA

    output = tmp_path / "bon.json"
    argv = ["best-of-n", "--prompts", str(DEFAULT_EVAL_DATA), "--policy", str(tiny_model_dir), "--output", str(output)]
    assert main([*argv, "--num-prompts", "2", "--n", "3", "--max-new-tokens", "4", "--seed", "7"]) == 0
    saved = json.loads(output.read_text())
    assert (saved["n"], saved["max_new_tokens"], saved["seed"], saved["temperature"], saved["scored"]) == (
        3,
        4,
        7,
        1.0,
        [],
    )
    assert saved["policy"] == str(tiny_model_dir) and saved["prompts"] == 2
    assert [len(s["candidates"]) for s in saved["samples"]] == [3, 3] and saved["samples"][0]["scores"] == {}


def test_every_model_is_loaded_once_for_all_its_heads_and_the_order_is_kept(tmp_path, monkeypatch):
    """A haf folder's three heads cost one model load and one scoring pass; the scores come back in the asked order."""
    from hafrm.experiments import bestofn
    from hafrm.model.hybrid import METADATA_FILE
    from hafrm.serve import rlhf

    haf, other = tmp_path / "haf", tmp_path / "other"
    haf.mkdir()
    other.mkdir()
    (haf / METADATA_FILE).write_text("{}")
    calls = []

    def fake_model_scorer(model, heads, max_length, batch_size):
        calls.append((model, list(heads)))
        offset = {"reward": 0.0, "implicit": 10.0, "combined": 20.0}
        return lambda prompts, responses: {h: [offset[h] + len(r) for r in responses] for h in heads}

    monkeypatch.setattr(rlhf, "model_scorer", fake_model_scorer)
    specs = [f"{haf}@reward", str(other), f"{haf}@implicit", f"{haf}@combined"]
    saved = {"judge": np.array([[1.0, 2.0]])}
    scores = bestofn.score_candidates(["p"], [["a", "bb"]], specs, saved=saved)
    assert calls == [(str(haf), ["reward", "implicit", "combined"]), (str(other), ["reward"])]
    assert list(scores) == ["judge", *specs]
    assert scores[f"{haf}@combined"].tolist() == [[21.0, 22.0]] and scores[str(other)].tolist() == [[1.0, 2.0]]
