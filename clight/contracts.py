"""What techniques need from a module and from a stream, as ``typing.Protocol`` classes.

A callback lists the protocols it relies on in ``module_contracts`` / ``stream_contracts``;
:class:`~clight.callback.ContinualCallback` checks them once in ``setup``, before any training, and names what is
missing. :class:`~clight.module.ContinualModule` and clight's datamodules satisfy all of them; a foreign
LightningModule or datamodule satisfies the ones its techniques list (docs/reuse.md shows the smallest adapters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from clight.errors import ClightConfigError

Batch = Mapping[str, Tensor]


@runtime_checkable
class ContinualModel(Protocol):
    """A module whose forward takes a batch dict and returns ``{"logits": ...}``, with its task's loss.

    Rehearsal, distillation and the importance estimates run the module on batches of their own (memory
    examples, estimate examples) through these methods."""

    def forward(self, batch: Batch) -> Mapping[str, Tensor]: ...

    def task_loss(self, batch: Batch, outputs: Mapping[str, Tensor]) -> Tensor:
        """The mean task loss of a batch (a scalar)."""
        ...

    def per_example_loss(self, batch: Batch, outputs: Mapping[str, Tensor]) -> Tensor:
        """The task loss of every example of a batch, ``(B,)``."""
        ...


@runtime_checkable
class HasOutputHead(Protocol):
    """A module that declares its output head (the classification layer): freezing and masking leave it
    trainable, and the weight-space techniques map its rows to classes."""

    def output_head(self) -> nn.Module | None: ...


@runtime_checkable
class HasTaskClasses(Protocol):
    """A classification module that knows which class ids (head rows) belong to each task."""

    task_classes: list[list[int]]


@runtime_checkable
class LabelSampler(Protocol):
    """A module that can draw labels from its own predictive distribution (EWC's true Fisher)."""

    def sample_labels(self, batch: Batch, outputs: Mapping[str, Tensor], uniforms: Tensor) -> dict[str, Tensor]:
        """``batch`` with labels drawn by inverse CDF from ``uniforms`` ``(B, W)``."""
        ...

    def label_width(self, max_length: int) -> int:
        """How many uniforms per example :meth:`sample_labels` needs."""
        ...


@runtime_checkable
class AdapterModel(Protocol):
    """A module holding a ``peft.PeftModel`` whose named LoRA adapters can be added, switched and merged: what
    :class:`~clight.adapters.AdapterMixin` provides to any LightningModule that holds one (subclass it first:
    ``class MyModule(AdapterMixin, pl.LightningModule)``)."""

    peft_model: Any
    adapter_names: list[str]
    active_adapters: list[str]
    trainable_adapters: list[str]

    def lora_layers(self) -> list[nn.Module]: ...

    def add_adapter(self, name: str) -> None: ...

    def delete_adapter(self, name: str) -> None: ...

    def use_adapters(self, active: Sequence[str], trainable: Sequence[str] = ()) -> None: ...

    def mark_base_modified(self, names: Sequence[str]) -> None: ...


@runtime_checkable
class HasFeatureBlocks(Protocol):
    """A module that names the blocks whose outputs feature distillation matches (for a model that is not a
    Hugging Face transformer, e.g. ``[self.net[1], self.net[3]]`` of an MLP)."""

    def feature_blocks(self) -> Sequence[nn.Module]: ...


@runtime_checkable
class TextGenerator(Protocol):
    """A module that continues prompts (left-padded token ids) greedily, or by sampling, and returns the new
    tokens (self-rehearsal generates its own training targets with it)."""

    def generate_tokens(self, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                        eos_token_id: int | Sequence[int], pad_token_id: int, do_sample: bool = False) -> Tensor: ...


@runtime_checkable
class ExampleStream(Protocol):
    """A datamodule that exposes every task's training examples and batches a list of them (rehearsal
    memories, importance estimates and the weight-space selection read these). Optional: without it those
    techniques keep rows of the training batches instead (:mod:`clight.callbacks._rows`); a datamodule with only
    one of the two members is refused."""

    train_examples: list[list[dict[str, Any]]]

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]: ...


def members(protocol: type) -> list[str]:
    """The attribute and method names a protocol declares."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    if "forward" in vars(protocol):
        names.add("forward")
    return sorted(names)


def missing(obj: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (empty: it satisfies the protocol)."""
    return [n for n in members(protocol) if not hasattr(obj, n)]


def require(obj: Any, protocol: type, *, who: str, role: str, fix: str) -> None:
    """Raise :class:`ClightConfigError` unless ``obj`` has every member of ``protocol``.

    Args:
        obj: the module or datamodule.
        protocol: one of this module's protocols.
        who: the technique that needs it (named in the message).
        role: ``module`` or ``datamodule``.
        fix: the way out.
    """
    lacks = missing(obj, protocol)
    if lacks:
        raise ClightConfigError(
            f"`{who}` needs a {role} that provides {lacks} (`clight.contracts.{protocol.__name__}`), which "
            f"`{type(obj).__name__}` lacks. {fix}"
        )


def optional(obj: Any, protocol: type, *, who: str, role: str, fix: str) -> bool:
    """Whether ``obj`` provides ``protocol`` (a technique with another path when it does not); an ``obj`` that
    provides only some of its members raises :class:`ClightConfigError` naming the missing ones, as
    :func:`require` does, instead of silently taking the other path."""
    lacks = missing(obj, protocol)
    if lacks and len(lacks) < len(members(protocol)):
        require(obj, protocol, who=who, role=role, fix=fix)
    return not lacks


@runtime_checkable
class InstructionExamples(Protocol):
    """An instruction stream: every example holds its formatted prompt's token ids (``prompt_ids``), the prompt
    text (``prompt``) and the reference answer (``reference``); the stream has the tokenizer, the answers' token
    budget and the length limit (what :class:`clight.datamodules.InstructionStream` provides)."""

    train_examples: list[list[dict[str, Any]]]
    tokenizer: Any
    max_new_tokens: int
    max_length: int

    def format_prompt(self, prompt: str) -> str: ...
