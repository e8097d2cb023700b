"""bench/training.py's pure parts: the rounds' throughput and its ratio, the updates a page sees,
the Train -> answering summary, the report, and the star it teaches."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))  # as when it runs: it imports its neighbour runs_latency
_spec = importlib.util.spec_from_file_location("bench_training", REPO / "bench" / "training.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def side(seconds, **extra):
    return {"seconds": seconds, "examples": 400, "epochs": 10, **extra}


def rounds():
    return [
        {"first": "in_process", "in_process": side(2.0, cpu_s=2.0),
         "backend": side(2.5, worker_cpu_s=2.4, worker_main_thread_cpu_s=2.1, backend_cpu_s=0.1),
         "updates_per_s": 19.5},
        {"first": "backend", "in_process": side(4.0, cpu_s=2.0),
         "backend": side(4.0, worker_cpu_s=2.5, worker_main_thread_cpu_s=2.2, backend_cpu_s=0.2),
         "updates_per_s": 12.0},
        {"first": "in_process", "in_process": side(2.5, cpu_s=2.5),
         "backend": side(2.5, worker_cpu_s=2.5, worker_main_thread_cpu_s=2.0, backend_cpu_s=0.1),
         "updates_per_s": 20.0},
    ]  # fmt: skip


def test_throughput_is_examples_times_epochs_over_seconds_and_the_ratio_is_of_the_medians():
    s = bench.throughput_summary(rounds())
    assert s["in_process"]["p50"] == 1600.0  # 4000 examples over 2.0, 4.0, 2.5 s: 2000, 1000, 1600
    assert s["backend"]["p50"] == 1600.0  # 1600, 1000, 1600
    assert s["in_process"]["min"] == 1000.0 and s["in_process"]["max"] == 2000.0
    assert s["in_process"]["spread_pct"] == 62.5  # (2000 - 1000) / 1600
    assert s["ratio_of_medians"] == 1.0 and s["met"] is True
    assert s["pair_ratios"] == [0.8, 1.0, 1.0]
    assert s["rounds"] == 3
    c = s["per_cpu_second"]
    assert c["in_process"]["p50"] == 2000.0  # 4000 over 2.0, 2.0, 2.5 CPU s
    assert c["worker"]["p50"] == 1600.0  # over 2.4, 2.5, 2.5
    assert c["ratio_of_medians"] == 0.8
    assert c["worker_main_thread"]["p50"] == round(4000 / 2.1, 3)
    assert c["worker_other_threads_cpu_s_p50"] == 0.3
    assert c["backend_cpu_s_p50"] == 0.1


def test_a_slower_backend_misses_the_goal():
    slow = rounds()
    for r in slow:
        r["backend"]["seconds"] *= 1.2
    s = bench.throughput_summary(slow)
    assert s["ratio_of_medians"] < bench.GOAL_RATIO and s["met"] is False


def test_without_cpu_figures_there_is_no_cpu_summary():
    bare = [{"first": "in_process", "in_process": side(2.0), "backend": side(2.0)}]
    assert "per_cpu_second" not in bench.throughput_summary(bare)


def test_only_running_training_statuses_count_as_updates():
    assert bench.is_training_update({"status": "running", "partial": {"status": "epoch", "epoch": 1}})
    assert bench.is_training_update({"status": "running", "partial": {"status": "start", "epoch": 0}})
    assert not bench.is_training_update({"status": "running", "partial": None})  # the claim
    assert not bench.is_training_update({"status": "running", "partial": {"step": "onnx"}})  # a publish
    assert not bench.is_training_update({"status": "succeeded", "partial": {"status": "epoch"}})


def test_update_rate_is_from_the_first_arrival_to_the_last():
    assert bench.update_rate([10.0, 10.1, 10.2, 10.5]) == pytest.approx(6.0)
    assert bench.update_rate([1.0]) == 0.0 and bench.update_rate([]) == 0.0
    assert bench.update_rate([2.0, 2.0]) == 0.0


def test_answer_summary_is_p50_min_max_of_each_part():
    answers = [
        {"total_s": 20.0, "training_s": 8.0, "publish_to_answer_s": 12.0, "published_s": 11.0},
        {"total_s": 16.0, "training_s": 7.0, "publish_to_answer_s": 9.0, "published_s": 8.5},
        {"total_s": 30.0, "training_s": 9.0, "publish_to_answer_s": 21.0, "published_s": None},
    ]
    s = bench.answer_summary(answers)
    assert s["rounds"] == 3
    assert s["total_s"] == {"p50": 20.0, "min": 16.0, "max": 30.0}
    assert s["publish_to_answer_s"]["p50"] == 12.0
    assert s["published_s"] == {"p50": 9.75, "min": 8.5, "max": 11.0}  # the rounds that saw it


def report(with_answer=True):
    rs = rounds()
    if with_answer:
        for r in rs:
            r["backend"]["update_bytes_p50"] = 28_700
    results = {
        "date": "2026-12-05 21:00 UTC",
        "command": "bench/training.py",
        "machine": {"cpus": 2, "load_before": "1.00", "load_after": "1.10"},
        "threads": 1,
        "stars": 30,
        "epochs": 10,
        "rehearsed": 500,
        "train_examples": 400,
        "max_updates_per_second": 20.0,
        "rounds": rs,
        "throughput": bench.throughput_summary(rs),
        "updates": {"per_round": [19.5, 12.0, 20.0], "p50": 19.5, "met": True},
    }
    if with_answer:
        answers = [
            {"version": "0123456789ab", "training_s": 6.0, "published_s": 9.0, "publish_to_answer_s": 9.5,
             "total_s": 15.5},
            {"version": "abcdef012345", "training_s": 7.0, "published_s": None, "publish_to_answer_s": 10.0,
             "total_s": 17.0},
        ]  # fmt: skip
        results["answer"] = {"stars": 10, "epochs": 15, "rounds": answers, "summary": bench.answer_summary(answers)}
    return results


def test_the_report_states_every_round_and_each_goal():
    md = bench.markdown(report())
    assert md.startswith("# Training from the page")
    assert "| 2 | backend | 1000 ex/s (4.00 s) | 1000 ex/s (4.00 s) | 1.00 |" in md
    assert "| backend / in process (ratio of the medians) | 100% | >= 90% (met) |" in md
    assert ">= 10 (met)" in md
    assert "16.2 s" in md  # p50 of 15.5 and 17.0, rounded to a tenth
    assert "| 2 | `abcdef012345` | 7.0 s | - | 10.0 s | 17.0 s |" in md
    assert "worker's main thread 2.10" in md
    assert "(29 kB of JSON, p50)" in md


def test_the_report_without_update_sizes_ends_its_note_plainly():
    md = bench.markdown(report(with_answer=False))
    assert "kB of JSON" not in md and md.rstrip().endswith("a second).")


def test_the_report_without_serve_rounds():
    md = bench.markdown(report(with_answer=False))
    assert "Train -> the new version" not in md and "ratio of the medians" in md


def test_stars_are_png_data_urls_the_same_for_a_seed():
    a, b = bench.star_urls(2, seed=3), bench.star_urls(2, seed=3)
    assert a == b and a[0] != a[1]
    assert all(url.startswith("data:image/png;base64,") for url in a)
    assert bench.star_urls(1, seed=4) != a[:1]


def test_the_call_without_checkpoints_is_reported_beside_the_goal_but_not_in_it():
    rs = rounds()
    for r in rs:
        r["no_checkpoint"] = {**r["in_process"], "seconds": 2.0}  # 2000 examples/s each round
    s = bench.throughput_summary(rs)
    assert s["in_process_no_checkpoint"]["p50"] == 2000.0
    assert s["ratio_to_no_checkpoint"] == 0.8  # backend 1600 over 2000
    assert s["ratio_of_medians"] == 1.0  # the goal is against the same call as the worker's
    assert "in_process_no_checkpoint" not in bench.throughput_summary(rounds())
