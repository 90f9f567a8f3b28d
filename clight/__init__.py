"""clight: continual fine-tuning of pretrained models on PyTorch Lightning."""

from clight.callback import ContinualCallback, current_task
from clight.errors import ClightConfigError
from clight.module import ContinualModule
from clight.runner import StreamOptions, StreamRunner
from clight.task import Task, TaskInfo

__version__ = "0.1.0"

__all__ = [
    "ClightConfigError",
    "ContinualCallback",
    "ContinualModule",
    "StreamOptions",
    "StreamRunner",
    "Task",
    "TaskInfo",
    "current_task",
]
