"""Bundled evaluation and training tasks, built from real packaged data.

Each task is a folder under ``loragen/tasks/data/<name>/`` (a user task folder
has the same layout)::

    meta.json         name, kind, family, source, license, descriptions (>= 5),
                      counts, data_limited
    task.yaml         lm-eval task over the JSONL files (relative data_files)
    train.jsonl       one record per line
    validation.jsonl
    test.jsonl

Records carry pre-rendered text so finetuning and lm-eval see the same prompt:

* exact match: ``{"prompt": str, "target": str}``
* multiple choice: ``{"prompt": str, "choices": [str, ...], "label": int}``

The answer convention: a prompt never ends with whitespace, and every answer
(``target`` and each entry of ``choices``) starts with exactly one space and has
no trailing whitespace. The text a model is trained on is ``prompt + answer``
(``prompt_and_answer`` returns the two parts). The task YAMLs keep that text:
they use ``target_delimiter: " "`` with the trimmed answer, and exact match
strips whitespace from the generation before comparing (case and punctuation
ignored).

``scripts/build_tasks.py`` regenerates the bundled data deterministically.
"""

from loragen.tasks.suite import (
    KINDS,
    SPLITS,
    Task,
    check_known_tasks,
    export_task,
    find_task,
    get_task,
    list_tasks,
    load_task_dir,
    materialize_yaml,
    prompt_and_answer,
)

__all__ = [
    "KINDS",
    "SPLITS",
    "Task",
    "check_known_tasks",
    "export_task",
    "find_task",
    "get_task",
    "list_tasks",
    "load_task_dir",
    "materialize_yaml",
    "prompt_and_answer",
]
