"""The two preprocessing modes side by side, for notebooks and reports (no logic of its own).

``mode_types_table`` runs a fresh default and a fresh ``compat="vle"`` preprocessor on one record
and lists, per referenced object of one choice, the name each mode gives it and the type id it
gets (on its mentions and its object token); ``numbering_differences`` counts the (question, choice)
pairs of many records on which the two modes number the referenced objects differently.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_prep.preprocess import VCRPreprocessor

__all__ = ["mode_types_table", "numbering_differences"]


def _mentions(example: Mapping[str, Any], choice: int, tokenizer: Any) -> dict[int, str]:
    """VCR object -> the text of its first mention in one choice."""
    ids, tags, objects = (example[key][choice] for key in ("input_ids", "text_type_ids", "object_ids"))
    names: dict[int, str] = {}
    for slot, obj in enumerate(objects):
        positions = [i for i, tag in enumerate(tags) if tag == slot + 2]
        run = [positions[0]] if positions else []
        while run and run[-1] + 1 in positions:
            run.append(run[-1] + 1)
        names[obj] = tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([ids[i] for i in run])).strip()
    return names


def mode_types_table(
    record: Mapping[str, Any], tokenizer: Any, *, task: str = "q2a", choice: int | None = None,
    metadata: Mapping[str, Any] | None = None, images_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{object, class, name / type (default), name / type (compat=vle)}`` for one choice.

    Args:
        tokenizer: a SentencePiece tokenizer (``compat="vle"`` needs one).
        choice: the choice to show; None: the gold one (answer for q2a, rationale for qa2r).
    """
    if choice is None:
        choice = record["answer_label"] if task == "q2a" else record["rationale_label"]
    examples = {
        mode: VCRPreprocessor.build(tokenizer, task=task, compat=mode, images_root=images_root).prepare_text(record, metadata=metadata)
        for mode in ("none", "vle")
    }
    names = {mode: _mentions(example, choice, tokenizer) for mode, example in examples.items()}
    types = {mode: {obj: k + 2 for k, obj in enumerate(example["object_ids"][choice])} for mode, example in examples.items()}
    objects = sorted(set(types["none"]) | set(types["vle"]))
    return [
        {
            "object": obj,
            "class": record["objects"][obj],
            "name (default)": names["none"].get(obj, "-"),
            "type (default)": types["none"].get(obj, "-"),
            "name (compat=vle)": names["vle"].get(obj, "-"),
            "type (compat=vle)": types["vle"].get(obj, "-"),
        }
        for obj in objects
    ]


def numbering_differences(records: Sequence[Mapping[str, Any]], tokenizer: Any, *, task: str,
                          metadata: Sequence[Mapping[str, Any]]) -> int:
    """Pairs (record, choice) whose referenced objects get other type ids under ``compat="vle"`` (official:
    Python ``set`` order) than under the default (order of first mention)."""
    official = VCRPreprocessor.build(tokenizer, task=task, compat="vle").prepare_many(records, metadata=metadata)
    default = VCRPreprocessor.build(tokenizer, task=task).prepare_many(records, metadata=metadata)
    differing = 0
    for vle_example, default_example in zip(official, default):
        for vle_objects, default_objects in zip(vle_example["object_ids"], default_example["object_ids"]):
            shared = set(vle_objects) & set(default_objects)
            differing += any(vle_objects.index(o) != default_objects.index(o) for o in shared)
    return differing
