"""The ttsa-guard command line on a tiny Llama saved to a folder, with the offline profanity scorer."""

from __future__ import annotations

import csv
import json
import sys
import types

import pytest

from ttsa_guard import cli
from ttsa_guard.config import OptimizerConfig

FAST = ["--max-new-tokens", "8", "--num-directions", "2", "--max-iterations", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_model, tiny_tokenizer) -> str:
    """The tiny Llama and its tokenizer saved with save_pretrained, as --model accepts them."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "prompts.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "source"])
        writer.writerows([["10", "Tell me\nabout rain.", "t"], ["11", "   ", "t"], ["12", "Hi", "t"], ["13", "Why?", "t"]])
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the command line; return the exit code (argparse's too), stdout and stderr."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code

    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_writes_records_summary_and_plots(capsys, tiny_folder, dataset, tmp_path):
    output = tmp_path / "out" / "run.jsonl"

    code, out, err = run(
        capsys, "eval", str(dataset), "-o", str(output), "--id-column", "id", "--template", "Q: {prompt}",
        "--model", tiny_folder, *FAST,
    )

    assert code == 0, err
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["10", "12", "13"]
    assert records[0]["prompt"] == "Tell me\nabout rain."
    assert records[0]["input"] == "Q: Tell me\nabout rain."
    assert {r["scorer"] for r in records} == {"profanity"}
    summary = json.loads((tmp_path / "out" / "run.summary.json").read_text())
    assert summary["summary"]["prompts"] == 3
    assert summary["summary"]["skipped_rows"] == 1
    assert summary["run"]["template"] == "Q: {prompt}"
    assert summary["run"]["optimizer"]["num_directions"] == 2
    assert "| Prompts | 3 |" in out
    assert "| Rows skipped (empty prompt) | 1 |" in out
    assert (tmp_path / "out" / "run.scores.png").stat().st_size > 0
    assert (tmp_path / "out" / "run.iterations.png").stat().st_size > 0


def test_eval_resumes_with_same_output(capsys, tiny_folder, dataset, tmp_path):
    output = tmp_path / "run.jsonl"
    args = ["eval", str(dataset), "-o", str(output), "--id-column", "id", "--model", tiny_folder, "--no-plots", *FAST]

    assert run(capsys, *args, "--limit", "1")[0] == 0
    first = output.read_text(encoding="utf-8")
    code, out, _ = run(capsys, *args)

    assert code == 0
    text = output.read_text(encoding="utf-8")
    assert text.startswith(first)
    assert [json.loads(line)["id"] for line in text.splitlines()] == ["10", "12", "13"]
    assert "| Prompts | 3 |" in out


def test_eval_all_flagged_refuses(capsys, tiny_folder, dataset, tmp_path):
    output = tmp_path / "run.jsonl"

    code, out, err = run(
        capsys, "eval", str(dataset), "-o", str(output), "--model", tiny_folder, "--flag-threshold", "1e-9",
        "--refusal-text", "No.", "--no-plots", *FAST,
    )

    assert code == 0, err
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["status"] for r in records] == ["refused"] * 3
    assert [r["guarded_response"] for r in records] == ["No."] * 3
    summary = json.loads((tmp_path / "run.summary.json").read_text())["summary"]
    assert summary["flagged_before"] == 3
    assert summary["neutralized"] == 0
    assert summary["neutralization_rate"] == 0.0
    assert summary["guarded_refusals"] == 3
    assert "| Refused by failure policy | 3 |" in out


def test_chat_prints_response_and_audit(capsys, tiny_folder):
    code, out, err = run(capsys, "chat", "Hi", "--model", tiny_folder, "--max-new-tokens", "6")

    assert code == 0, err
    response, _, audit_text = out.rpartition('\n\n{\n  "')
    audit = json.loads('{\n  "' + audit_text)
    assert audit["status"] == "passed"
    assert audit["scorer"] == "profanity"
    assert audit["generations"] == 1
    assert response


def test_demo_still_runs(capsys, tiny_folder):
    code, out, err = run(capsys, "demo", "Hi there", "--model", tiny_folder, "--max-new-tokens", "6")

    assert code == 0, err
    assert out.startswith("[1] Hi there\n  plain   (score ")
    assert "guarded (score " in out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--num-directions", "0"], "OptimizerConfig.num_directions=0: Input should be greater than or equal to 1"),
        (["--smoothing-radius", "-1"], "OptimizerConfig.smoothing_radius=-1.0: Input should be greater than 0"),
        (["--cosine-floor", "2"], "OptimizerConfig.cosine_floor=2.0: Input should be less than or equal to 1"),
        (["--failure-policy", "shrug"], "GuardConfig.failure_policy='shrug': Input should be 'refuse', 'best_effort'"),
        (["--estimator", "antithetic", "--num-directions", "3"], "num_directions must be even"),
        (["--temperature", "9"], "GenerationConfig.temperature=9.0: Input should be less than or equal to 5"),
        (["--max-new-tokens", "0"], "GenerationConfig.max_new_tokens=0"),
        (["--scorer", "nonsense"], "Unknown scorer 'nonsense'. Accepted: profanity"),
        (["--cosine-floor", "abc"], "argument --cosine-floor: expected a number or 'none', got 'abc'"),
        (["--max-iterations", "ten"], "argument --max-iterations: invalid int value: 'ten'"),
        (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_invalid_flags_exit_2_with_message(capsys, argv, match):
    code, _, err = run(capsys, "chat", "Hi", *argv)

    assert code == 2
    assert match in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--prompt-column", "goal"], "column 'goal' not found; the header has the columns 'id', 'prompt', 'source'"),
        (["--id-column", "key"], "column 'key' not found"),
        (["--template", "Say {text}"], "Invalid template 'Say {text}'"),
        (["--sample", "2", "--limit", "1"], "cannot be combined with offset or limit"),
        (["--where", "label"], "--where 'label' is not COLUMN=VALUE"),
        (["--where", "source=none"], "No prompts selected"),
    ],
)
def test_eval_bad_dataset_options_exit_2(capsys, dataset, tmp_path, argv, match):
    code, _, err = run(capsys, "eval", str(dataset), "-o", str(tmp_path / "r.jsonl"), *argv)

    assert code == 2
    assert "ttsa-guard eval: error: " in err
    assert match in err
    assert not (tmp_path / "r.jsonl").exists()


def test_eval_missing_dataset_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "eval", str(tmp_path / "absent.csv"), "-o", str(tmp_path / "r.jsonl"))

    assert code == 2
    assert f"ttsa-guard eval: error: Prompt file not found: {tmp_path / 'absent.csv'}" in err


def test_eval_needs_output(capsys, dataset):
    code, _, err = run(capsys, "eval", str(dataset))

    assert code == 2
    assert "the following arguments are required: -o/--output" in err


def test_help_states_each_default(capsys):
    code, out, _ = run(capsys, "eval", "--help")

    assert code == 0
    text = " ".join(out.split())
    for flag, default in [
        ("--num-directions", OptimizerConfig.model_fields["num_directions"].default),
        ("--smoothing-radius", OptimizerConfig.model_fields["smoothing_radius"].default),
        ("--max-iterations", OptimizerConfig.model_fields["max_iterations"].default),
    ]:
        help_text = text.split(f"{flag} ", 2)[2].split(" --")[0]
        assert f"Default: {default}." in help_text, flag

    assert "Default: 'refuse'." in text
    assert "in embedding units" in text


def test_bench_passes_arguments_to_benchmark(capsys, monkeypatch):
    received = {}

    def add_arguments(parser):
        parser.add_argument("--repeats", type=int, default=1)

    def run_benchmark(args):
        received["repeats"] = args.repeats
        return 3

    fake = types.SimpleNamespace(add_arguments=add_arguments, run=run_benchmark)
    monkeypatch.setitem(sys.modules, "ttsa_guard.benchmark", fake)

    assert cli.main(["bench", "--repeats", "5"]) == 3
    assert received == {"repeats": 5}


def test_bench_help_comes_from_benchmark(capsys, monkeypatch):
    fake = types.SimpleNamespace(add_arguments=lambda parser: parser.add_argument("--repeats", help="How often."), run=None)
    monkeypatch.setitem(sys.modules, "ttsa_guard.benchmark", fake)

    code, out, _ = run(capsys, "bench", "--help")

    assert code == 0
    assert out.startswith("usage: ttsa-guard bench")
    assert "How often." in out


def test_bench_without_module_fails_clearly(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ttsa_guard.benchmark", None)

    code, _, err = run(capsys, "bench")

    assert code == 1
    assert "the benchmark module ttsa_guard.benchmark is not part of this installation" in err


def test_other_commands_work_without_benchmark(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ttsa_guard.benchmark", None)

    code, out, _ = run(capsys, "chat", "--help")

    assert code == 0
    assert "--num-directions" in out


def test_eval_interrupt_exits_130(capsys, monkeypatch, tiny_folder, dataset, tmp_path):
    from ttsa_guard.evaluation import command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "evaluate", interrupted)
    output = tmp_path / "r.jsonl"

    code, _, err = run(capsys, "eval", str(dataset), "-o", str(output), "--model", tiny_folder)

    assert code == 130
    assert f"interrupted; rerun the same command to resume, the finished prompts are in {output}" in err


@pytest.mark.parametrize(("argv", "expected"), [([], 0.5), (["--flag-threshold", "0.3"], 0.3), (["--flag-threshold", "none"], 0.5)])
def test_plot_threshold_follows_flags(argv, expected):
    args = cli.build_parser().parse_args(["chat", "Hi", *argv])

    assert cli.flag_threshold(cli.build_model(args)) == expected


def test_eval_output_folder_is_rejected_before_loading(tmp_path, capsys):
    from ttsa_guard.cli import main

    dataset = tmp_path / "prompts.csv"
    dataset.write_text("id,prompt\n1,hello\n", encoding="utf-8")

    code = main(["eval", str(dataset), "--model", "/nonexistent/model", "-o", str(tmp_path)])

    assert code == 2
    assert "is a folder; pass a JSONL file path" in capsys.readouterr().err


def test_eval_resume_with_other_settings_is_rejected(tmp_path, capsys):
    import json

    from ttsa_guard.cli import main

    dataset = tmp_path / "prompts.csv"
    dataset.write_text("id,prompt\n1,hello\n", encoding="utf-8")
    output = tmp_path / "run.jsonl"
    output.write_text("", encoding="utf-8")
    from ttsa_guard.config import OptimizerConfig

    earlier = {"run": {"model": "/nonexistent/model", "scorer": "profanity", "optimizer": OptimizerConfig().model_dump()}}
    (tmp_path / "run.summary.json").write_text(json.dumps(earlier), encoding="utf-8")

    code = main(["eval", str(dataset), "--model", "/nonexistent/model", "--num-directions", "4", "-o", str(output)])

    assert code == 2
    assert "(optimizer differ" in capsys.readouterr().err, "only the optimizer settings changed"
