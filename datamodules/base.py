"""ContinualDataModule: a stream of tasks, the current task's train loader, one eval loader per task."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning.pytorch as pl
import torch

from clight.datamodules.checks import check_arguments, check_examples, task_specs
from clight.datamodules.hf_source import HFDataset, as_spec, read_dataset_tasks
from clight.datamodules.io import read_task_rows, stream_fingerprint
from clight.datamodules.loaders import LoadersMixin
from clight.datamodules.probes import resolve_probes
from clight.datamodules.sampling import fixed_sample
from clight.datamodules.tokenizers import check_unk_rate, load_tokenizer
from clight.datamodules.validation import split_validation
from clight.errors import ClightConfigError
from clight.task import Probe, Task, TaskInfo

Example = dict[str, Any]
# A token covers a few characters (WordNet glosses: ~4.5 with MiniLM's WordPiece); a text is cut to this many
# characters per token of `max_length` before it is tokenized, which changes no text a tokenizer would keep whole
# in `max_length` tokens, and spares tokenizing the rest (a 50 MB line cost 7.2 GB when tokenized whole).
MAX_CHARS_PER_TOKEN = 64
UNK_SAMPLE_ROWS = 64  # training rows of each task that the unknown-token check tokenizes


class ContinualDataModule(LoadersMixin, pl.LightningDataModule):
    """Base of clight's task streams.

    A stream is read from one source: one train and one test file with a ``task`` column, a ``tasks`` list naming
    per-task files, or a Hugging Face ``dataset`` with a ``task`` column. Subclasses turn rows into examples
    (:meth:`encode`) and batches (:meth:`collate`). The stream runner calls :meth:`prepare_stream` once, then
    :meth:`set_stage` before each task; ``train_dataloader`` serves the current stage and :meth:`eval_dataloaders`
    one loader per task.

    Args:
        train_file: training rows of every task, with a ``task_column``.
        test_file: evaluation rows of every task, with a ``task_column``.
        tasks: the tasks in stream order. With ``train_file``/``test_file`` only ``name`` (and ``labels``) are
            needed and select/order the tasks; without them every task names its own ``train``/``test`` files.
            Empty: every task of ``train_file`` (or the ``dataset``'s train split), in order of first appearance.
        task_column: column naming the task in ``train_file``/``test_file`` or the ``dataset``'s splits.
        dataset: a Hugging Face ``datasets`` source (:class:`~clight.datamodules.hf_source.HFDataset`; needs
            ``clight[data]``): ``{path: json, data_files: {train: a.jsonl, test: b.jsonl}}`` or a hub name (offline:
            from the local cache). Memory-mapped, its rows are read lazily; the encoded examples are kept in RAM.
        tokenizer: tokenizer folder (or ``pkg:<package>``); empty: the model's own.
        batch_size: training batch size per device.
        eval_batch_size: evaluation batch size (default ``batch_size``).
        max_length: truncation length in tokens.
        joint: train once on the union of all tasks (the multitask upper bound) instead of one task at a time.
        eval_max_examples: evaluate at most this many examples of each task and probe (a fixed sample).
        seed: seed of the data order (combined with the task index and epoch).
        num_workers: DataLoader workers.
        drop_last: drop each epoch's last, smaller training batch (keeps every step's shape fixed, which
            ``torch.compile`` and throughput measurements want).
        probes: eval-only tasks (:class:`~clight.task.Probe`), evaluated before training and after every task,
            never trained; ``results.json`` reports their retention. Streams say which kinds they support.
        val_fraction: hold out this seeded share of each task's training examples (at least one) as its validation
            set, evaluated after every task beside the test sets (``results.json``'s ``validation`` matrices, what
            ``clight tune`` reads). 0: no validation split.
    """

    eval_kind = "classification"  # how the model evaluates this stream's tasks (see clight.heads.METRICS_BY_KIND)

    def __init__(
        self,
        *,
        train_file: str | None = None,
        test_file: str | None = None,
        tasks: list[Task] | None = None,
        task_column: str = "task",
        dataset: HFDataset | None = None,
        tokenizer: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        max_length: int = 128,
        joint: bool = False,
        eval_max_examples: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
        probes: list[Probe] | None = None,
        val_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        check_arguments(train_file=train_file, test_file=test_file, tasks=tasks, batch_size=batch_size,
                        max_length=max_length, eval_batch_size=eval_batch_size, eval_max_examples=eval_max_examples,
                        num_workers=num_workers, dataset=dataset, val_fraction=val_fraction)
        self.train_file, self.test_file, self.dataset = train_file, test_file, as_spec(dataset)
        self.task_specs = task_specs(tasks)
        self.probe_specs = [p if isinstance(p, Probe) else Probe(**p) for p in (probes or [])]
        self.probes: list[Probe] = []
        self.probe_examples: list[list[Example]] = []
        self.task_column = task_column
        self.tokenizer_path = tokenizer
        self.tokenizer_from_model = False  # set by the runner when the empty `tokenizer` means the model folder's
        self.tokenizer: Any = None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_length = max_length
        self.joint = joint
        self.eval_max_examples = eval_max_examples
        self.seed = seed
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.val_fraction = float(val_fraction)
        self.tasks: list[Task] = []
        self.train_examples: list[list[Example]] = []
        self.test_examples: list[list[Example]] = []
        self.val_examples: list[list[Example]] = []  # evaluated (a fixed sample of `eval_max_examples`), never trained
        self.stage_index = 0
        self.extra_train_examples: list[Example] = []
        self._prepared = False
        self._fingerprint: dict[str, Any] | None = None

    # ---- what subclasses provide ------------------------------------------------------------------------
    @abstractmethod
    def encode(self, rows: list[dict[str, Any]], task_index: int, *, path: str, split: str) -> list[Example]:
        """Turn one task's rows into examples (token ids and targets)."""

    @abstractmethod
    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Pad a list of examples into a batch."""

    def encode_probe(self, rows: list[dict[str, Any]], index: int, probe: Probe) -> list[Example]:
        """Turn a probe's rows into evaluation examples (``index``: its evaluation loader). Default: no probes."""
        raise ClightConfigError(f"`probes`: {type(self).__name__} evaluates no probes (probe {probe.name!r}); "
                                "use `clight.datamodules.InstructionStream`, or remove `probes`.")

    def collate_eval(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Batch evaluation examples; default :meth:`collate`."""
        return self.collate(examples)

    def resolve_labels(self, tasks: list[Task], rows: list[list[dict[str, Any]]]) -> list[Task]:
        """Hook for classification streams: fill in and check label sets. Default: unchanged."""
        return tasks

    def tokenizer_texts(self, rows: list[dict[str, Any]], path: str) -> list[str]:
        """The text of a task's training rows (what a trained tokenizer learns from, and what the unknown-token
        check samples). Default: none."""
        return []

    def clip(self, text: str) -> str:
        """``text`` cut to what ``max_length`` tokens can cover (:data:`MAX_CHARS_PER_TOKEN`), before tokenizing."""
        return text[: self.max_length * MAX_CHARS_PER_TOKEN]

    def make_tokenizer(self) -> Any:
        """The tokenizer; default: load ``tokenizer`` (the runner fills it with the model folder)."""
        if self.tokenizer_path is None:
            raise ClightConfigError(
                "`data.tokenizer` is empty and the model was built from a config, so there is no tokenizer: "
                "give `data.tokenizer` a tokenizer folder."
            )
        return load_tokenizer(self.tokenizer_path, argument="data.tokenizer", from_model=self.tokenizer_from_model)

    # ---- the stream ----------------------------------------------------------------------------------------
    @property
    def primary_metric(self) -> str | None:
        """The headline metric of the stream's result tables (one the model reports, e.g. ``task_il_acc`` for a
        task-incremental stream); ``None``: the model's first."""
        return None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def probe_names(self) -> list[str]:
        return [p.name for p in self.probes]

    @property
    def eval_names(self) -> list[str]:
        """What :meth:`eval_dataloaders` evaluates, in order: the tasks, then the probes."""
        return self.task_names + self.probe_names

    @property
    def eval_kinds(self) -> list[str]:
        """How each of :attr:`eval_names` is evaluated (``clight.heads.METRICS_BY_KIND``)."""
        return [self.eval_kind] * len(self.tasks) + [str(p.kind) for p in self.probes]

    @property
    def stage_names(self) -> list[str]:
        """What is trained, in order: the task names, or ``["joint"]``."""
        return ["joint"] if self.joint else self.task_names

    @property
    def current_task(self) -> TaskInfo:
        return TaskInfo(index=self.stage_index, name=self.stage_names[self.stage_index], num_tasks=len(self.stage_names))

    @property
    def current_budget(self) -> Task | None:
        """The per-task budget (``max_epochs``/``max_steps``) of the current stage, if the task sets one."""
        return None if self.joint else self.tasks[self.stage_index]

    def set_stage(self, index: int) -> None:
        if not 0 <= index < len(self.stage_names):
            raise IndexError(f"stage {index} out of range 0..{len(self.stage_names) - 1}")
        self.stage_index = index

    set_task = set_stage

    def prepare_stream(self) -> None:
        """Read every task's files, check them, tokenize. Idempotent."""
        if self._prepared:
            return
        tasks, train_rows, test_rows = self._read_tasks()
        self.tasks = tasks = self.resolve_labels(tasks, train_rows)
        if self.tokenizer is None:
            self.tokenizer = self.make_tokenizer()
        for t, rows in zip(tasks, train_rows):
            check_unk_rate(self.tokenizer, self.tokenizer_texts(rows[:UNK_SAMPLE_ROWS], self._path(t, "train")),
                           argument="data.tokenizer", source=f"the training text of task {t.name!r}")
        self.train_examples = [self.encode(r, i, path=self._path(t, "train"), split="train")
                               for i, (t, r) in enumerate(zip(tasks, train_rows))]
        if self.val_fraction:
            splits = [split_validation(ex, self.val_fraction, seed=self.seed, task_index=i, task=t.name)
                      for i, (t, ex) in enumerate(zip(tasks, self.train_examples))]
            self.train_examples = [train for train, _ in splits]
            self.val_examples = [fixed_sample(val, self.eval_max_examples, self.seed) for _, val in splits]
        self.test_examples = [fixed_sample(self.encode(r, i, path=self._path(t, "test"), split="test"),
                                           self.eval_max_examples, self.seed) for i, (t, r) in enumerate(zip(tasks, test_rows))]
        for j, (probe, rows) in enumerate(resolve_probes(self.probe_specs, task_column=self.task_column,
                                                         task_names=self.task_names)):
            self.probes.append(probe)
            self.probe_examples.append(fixed_sample(self.encode_probe(rows, len(tasks) + j, probe),
                                                    probe.max_examples or self.eval_max_examples, self.seed))
        check_examples(tasks, self.train_examples, self.test_examples, self._path)
        self._prepared = True
        self.fingerprint()  # now, before a callback rewrites a task's examples (self-rehearsal's own answers)

    def fingerprint(self) -> dict[str, Any]:
        """Identifies the stream, so a resume with a different stream is refused."""
        if self._fingerprint is None:
            self._fingerprint = stream_fingerprint(self.tasks, self.train_examples, self.test_examples,
                                                   joint=self.joint, probes=list(zip(self.probe_names, self.probe_examples)),
                                                   validation=self.val_examples)
        return self._fingerprint

    def _path(self, task: Task, split: str) -> str:  # how error messages name a task's data
        if self.dataset is not None:
            return self.dataset.where(split)
        return str(getattr(task, split) or (self.train_file if split == "train" else self.test_file))

    def _read_tasks(self) -> tuple[list[Task], list[Any], list[Any]]:
        if self.dataset is not None:
            return read_dataset_tasks(self.dataset, self.task_specs, self.task_column)
        return read_task_rows(self.task_specs, self.train_file, self.test_file, self.task_column)

    def stage_train_examples(self, index: int | None = None) -> list[Example]:
        """Training examples of a stage, plus :attr:`extra_train_examples` (what a rehearsal callback mixes in
        for the current task; it sets them in ``on_task_start``)."""
        index = self.stage_index if index is None else index
        if self.joint:
            own = [ex for task_examples in self.train_examples for ex in task_examples]
        else:
            own = self.train_examples[index]
        return own + self.extra_train_examples if self.extra_train_examples else own
