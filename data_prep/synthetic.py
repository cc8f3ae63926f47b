"""Synthetic VCR-format data whose answers need grounding.

`generate_synthetic_vcr` writes a small dataset in the exact layout of VCR (``train.jsonl``,
``val.jsonl``, ``test.jsonl`` and ``vcr1images/<movie>/<frame>.jpg`` + ``.json`` metadata), so the
whole pipeline (records, object tokens, box geometry, training, evaluation) runs offline on data
that a tiny model can learn on a CPU in minutes.

What a frame holds: 5 objects (2-4 of them ``person``, the rest from `OTHER_CLASSES`), each drawn
as one solid shape (a figure, a block or a blob, whatever its class) in its own colour from
`PALETTE`, each in its own cell of a 2 x 3 layout, on a grey textured background. One of them
stands in the spotlight: it is lit, drawn in white (`SPOTLIGHT_COLOUR`), which no other object
wears. Frames come in the movie formats of `FRAME_SIZES` (2.4:1, 1.85:1, 16:9, 4:3).

Every question names objects by index, and only the object behind a mention tells the answer
(non-persons read "[3] is red" where persons read "[3] is wearing red"):

========= =========================== ====================================== ==================
type      question                    answers (one per choice)               needs
========= =========================== ====================================== ==================
spotlight Who is in the spotlight ?   [2] is in the spotlight .              which one is lit
colour    What colour is [2] wearing? [2] is wearing red .                   colour of [2]
why       Why does [2] stand out ?    Because [2] is wearing red .           colour of [2]
yes_no    Is [2] wearing red ?        Yes , [2] is ... / No , [2] is ...     colour of [2]
which     Which one is red ?          [0] is wearing red . / [4] is red .    which one is red
position  Where is [2] ?              [2] is at the top left .               place of [2]
========= =========================== ====================================== ==================

Rationales restate the answer's claim and add a fact about another object: "..., and [4] is in the
spotlight ." (the four choices name four different objects) or, when the target itself is lit,
"[2] is in the spotlight , and [4] is wearing blue ." (four colours).

Why the text alone does not give the answer (checked by a bag-of-words probe in the tests): the
distractors are the colours, places and objects of the *other* objects of the same frame, so every
choice names something that is in the picture; class, colour, shape and cell are drawn
independently (so "dog" cannot be found by its looks); the gold position is uniform; "Yes" is
gold one time in four. A model that sees the frame but cannot tie "[2]" to its box is at chance
too; one that pools the patches under each box is not.

Why a spotlight. Colour questions need the model to compare a word with the colour under a box, a
product of two signals that a tiny co-attention model trained from scratch does not discover in a
few epochs when the whole frame is full of colours (measured: loss stuck at ln 4). "Who is in the
spotlight ?" needs only the object token itself (is it the lit one?), so the model first learns to
read object tokens, then the colour questions follow. Frequencies (`_QUESTION_WEIGHTS`) favour it.

Extra record key: ``question_type`` (one of `QUESTION_TYPES`); VCR readers ignore unknown keys.
Test records carry no labels, match fields, sources or answer/rationale originals, as in VCR.

Run ``vlekit synthetic OUT_DIR`` to write the default dataset.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data_prep.constants import NUM_CHOICES
from data_prep.synthetic_scene import (
    COLS, FRAME_SIZES, OTHER_CLASSES, PALETTE, ROWS, SPOTLIGHT_COLOUR, SceneObject, background, draw_object, layout,
)

__all__ = [
    "FRAME_SIZES",
    "OTHER_CLASSES",
    "PALETTE",
    "QUESTION_TYPES",
    "SPOTLIGHT_COLOUR",
    "SyntheticVCR",
    "generate_synthetic_vcr",
]

QUESTION_TYPES: tuple[str, ...] = ("spotlight", "colour", "why", "yes_no", "which", "position")
# "spotlight" is the type a tiny model learns first (see the module docstring), so it is the most
# frequent; "position" is the hardest for it, so it is the rarest.
_QUESTION_WEIGHTS: tuple[float, ...] = (0.45, 0.2, 0.1, 0.1, 0.05, 0.1)
_SPLITS: tuple[str, ...] = ("train", "val", "test")
# Keys that only labelled splits carry; test records drop them, like VCR's test.jsonl.
_LABEL_KEYS: tuple[str, ...] = (
    "answer_orig", "rationale_orig", "answer_match_iter", "answer_sources", "answer_label",
    "rationale_sources", "rationale_match_iter", "rationale_label",
)

Token = str | list[int]


@dataclass(frozen=True)
class SyntheticVCR:
    """Where `generate_synthetic_vcr` put a dataset.

    Attributes:
        root: the output folder.
        images_root: ``root / "vcr1images"``; ``images_root / record["img_fn"]`` is the image.
        train, val, test: the ``.jsonl`` annotation files (``test`` has no labels; it may be empty).
    """

    root: Path
    images_root: Path
    train: Path
    val: Path
    test: Path

    def split(self, name: str) -> Path:
        """The annotation file of split ``name`` ("train", "val" or "test")."""
        if name not in _SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {_SPLITS}")
        return getattr(self, name)


@dataclass(frozen=True)
class _Annotation:
    question_type: str
    question: list[Token]
    answers: list[list[Token]]
    answer_label: int
    rationales: list[list[Token]]
    rationale_label: int


def generate_synthetic_vcr(
    out_dir: str | Path,
    *,
    num_train: int = 2000,
    num_val: int = 300,
    num_test: int = 100,
    seed: int = 0,
    questions_per_image: int = 2,
    num_movies: int = 8,
    jpeg_quality: int = 90,
    frame_scale: int = 1,
) -> SyntheticVCR:
    """Write a synthetic VCR-format dataset to ``out_dir`` and return its paths.

    Args:
        out_dir: output folder (created; files of an earlier run are overwritten).
        num_train, num_val, num_test: number of questions (records) per split.
        seed: the data is a pure function of the arguments: the same call gives the same bytes.
            Each image draws from its own stream ``(seed, split, image)``, so e.g. ``val`` does not
            change when ``num_train`` does.
        questions_per_image: questions asked about each image (VCR asks several per frame).
        num_movies: movie folders per split; each movie has one frame format of `FRAME_SIZES`.
        jpeg_quality: JPEG quality of the frames.
        frame_scale: each frame drawn as at 1, then enlarged this many times (boxes, polygons and sizes
            with it): ``8`` gives VCR's 1920-pixel-wide frames, for measuring what decoding costs. The
            records are the same at every scale.

    Returns:
        The `SyntheticVCR` paths.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if questions_per_image < 1 or num_movies < 1:
        raise ValueError(
            f"questions_per_image and num_movies must be >= 1, got {questions_per_image} and {num_movies}"
        )
    if not 1 <= jpeg_quality <= 95:
        raise ValueError(f"jpeg_quality must be in 1..95 (PIL's useful range), got {jpeg_quality}")
    if isinstance(frame_scale, bool) or not isinstance(frame_scale, int) or not 1 <= frame_scale <= 16:
        raise ValueError(f"frame_scale must be an int in 1..16 (8: VCR's 1920-pixel-wide frames), got {frame_scale!r}")

    root = Path(out_dir)
    images_root = root / "vcr1images"
    images_root.mkdir(parents=True, exist_ok=True)
    paths = SyntheticVCR(root, images_root, root / "train.jsonl", root / "val.jsonl", root / "test.jsonl")
    for split_id, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val, num_test))):
        lines: list[str] = []
        for image_id in range(math.ceil(count / questions_per_image)):
            rng = np.random.default_rng((seed, split_id, image_id))
            num_questions = min(questions_per_image, count - image_id * questions_per_image)
            lines += _write_image_and_records(
                rng, split=split, split_id=split_id, image_id=image_id, first_annot=len(lines),
                num_questions=num_questions, num_movies=num_movies, images_root=images_root,
                jpeg_quality=jpeg_quality, frame_scale=frame_scale,
            )
        paths.split(split).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------- images


def _write_image_and_records(
    rng: np.random.Generator,
    *,
    split: str,
    split_id: int,
    image_id: int,
    first_annot: int,
    num_questions: int,
    num_movies: int,
    images_root: Path,
    jpeg_quality: int,
    frame_scale: int = 1,
) -> list[str]:
    """Draw one frame, write it with its metadata, and return its records as JSON lines."""
    movie_id = image_id % num_movies
    fmt, width, height = FRAME_SIZES[movie_id % len(FRAME_SIZES)]
    movie = f"{9000 + 100 * split_id + movie_id}_SYNTHETIC_{fmt.upper()}"
    start = 7.0 * (image_id // num_movies)  # a clip's time stamps, as in VCR's file names
    stem = f"{movie}/{movie}_{_clock(start)}-{_clock(start + 4.0)}@0"
    objects = layout(rng, width, height)

    image = Image.fromarray(background(rng, width, height))
    draw = ImageDraw.Draw(image)
    segms = [draw_object(draw, obj) for obj in objects]
    (images_root / movie).mkdir(exist_ok=True)
    k = frame_scale
    if k > 1:
        image = image.resize((width * k, height * k), Image.Resampling.BICUBIC)
    image.save(images_root / f"{stem}.jpg", quality=jpeg_quality)
    metadata = {
        "boxes": [[*(k * c for c in obj.box), round(float(rng.uniform(0.9, 1.0)), 4)] for obj in objects],
        "segms": [[[[k * x, k * y] for x, y in polygon] for polygon in parts] for parts in segms],
        "names": [obj.name for obj in objects],
        "width": width * k,
        "height": height * k,
    }
    (images_root / f"{stem}.json").write_text(json.dumps(metadata), encoding="utf-8")

    lines = []
    for question_number in range(num_questions):
        annotation = _annotate(rng, objects, str(rng.choice(QUESTION_TYPES, p=_QUESTION_WEIGHTS)))
        record = _record(
            rng, annotation, objects, movie=movie, stem=stem, split=split, image_id=image_id,
            question_number=question_number, annot=first_annot + question_number,
        )
        lines.append(json.dumps(record))
    return lines


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:02d}.{minutes:02d}.{secs:06.3f}"


def _has_colour(obj: SceneObject, colour: str) -> list[Token]:
    """``[2] is wearing red`` for a person, ``[3] is red`` for a thing."""
    if obj.name == "person":
        return [[obj.index], "is", "wearing", colour]
    return [[obj.index], "is", colour]


def _in_spotlight(obj: SceneObject) -> list[Token]:
    return [[obj.index], "is", "in", "the", "spotlight"]


def _at_place(obj: SceneObject, row: int, col: int) -> list[Token]:
    return [[obj.index], "is", "at", "the", ROWS[row], COLS[col]]


def _shuffle_in(
    rng: np.random.Generator, gold: list[Token], distractors: list[list[Token]]
) -> tuple[list[list[Token]], int]:
    """The choices in a uniformly random order, and the gold one's position."""
    choices = [gold, *distractors]
    order = [int(i) for i in rng.permutation(len(choices))]
    return [choices[i] for i in order], order.index(0)


def _pick(rng: np.random.Generator, items: list[Any], k: int) -> list[Any]:
    """``k`` of ``items`` in random order."""
    return [items[i] for i in rng.permutation(len(items))[:k]]


def _annotate(rng: np.random.Generator, objects: list[SceneObject], question_type: str) -> _Annotation:
    """One question of ``question_type`` about the image, with its choices and labels."""
    lit = next(o for o in objects if o.colour == SPOTLIGHT_COLOUR)
    target = lit if question_type == "spotlight" else objects[int(rng.integers(len(objects)))]
    others = [o for o in objects if o is not target]
    other_objects = _pick(rng, others, NUM_CHOICES - 1)
    other_colours = [o.colour for o in _pick(rng, others, NUM_CHOICES - 1)]
    claim = _has_colour(target, target.colour)  # what the gold answer says, restated by the rationales
    if question_type == "spotlight":
        question = ["Who", "is", "in", "the", "spotlight", "?"]
        claim = _in_spotlight(target)
        gold, distractors = claim + ["."], [_in_spotlight(o) + ["."] for o in other_objects]
    elif question_type == "which":
        question = ["Which", "one", "is", target.colour, "?"]
        gold, distractors = claim + ["."], [_has_colour(o, target.colour) + ["."] for o in other_objects]
    elif question_type == "position":
        question = ["Where", "is", [target.index], "?"]
        claim = _at_place(target, target.row, target.col)
        gold, distractors = claim + ["."], [_at_place(target, o.row, o.col) + ["."] for o in other_objects]
    elif question_type == "colour":
        wearing = ["wearing"] if target.name == "person" else []
        question = ["What", "colour", "is", [target.index], *wearing, "?"]
        gold, distractors = claim + ["."], [_has_colour(target, c) + ["."] for c in other_colours]
    elif question_type == "why":
        question = ["Why", "does", [target.index], "stand", "out", "?"]
        gold = ["Because", *claim, "."]
        distractors = [["Because", *_has_colour(target, c), "."] for c in other_colours]
    elif question_type == "yes_no":
        # The asked colour is the true one a quarter of the time, so "Yes" is gold one time in four;
        # either way the choices name the true colour and three others of this image once each.
        truthful = bool(rng.integers(NUM_CHOICES) == 0)
        asked = target.colour if truthful else other_colours.pop()
        asked_claim = _has_colour(target, asked)  # [[i], "is", ("wearing",) colour]
        question = ["Is", asked_claim[0], *asked_claim[2:], "?"]
        yes = ["Yes", ",", *asked_claim, "."]
        nos = [["No", ",", *_has_colour(target, c), "."] for c in other_colours]
        gold, distractors = (yes, nos) if truthful else (["No", ",", *claim, "."], [yes, *nos])
    else:
        raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")
    answers, answer_label = _shuffle_in(rng, gold, distractors)
    rationales, rationale_label = _rationales(rng, claim, target, lit, others)
    return _Annotation(question_type, question, answers, answer_label, rationales, rationale_label)


def _rationales(
    rng: np.random.Generator, claim: list[Token], target: SceneObject, lit: SceneObject, others: list[SceneObject]
) -> tuple[list[list[Token]], int]:
    """Four rationales: the answer's claim, then a fact about another object that only the image tells.

    When the target is not the one in the spotlight: "[2] is wearing red , and [4] is in the
    spotlight ." with [4] any of the four other objects (a tiny model learns this kind first).
    Otherwise: "[2] is in the spotlight , and [4] is wearing blue ." with the four colours of the
    other objects (here every colour but the target's is in play, so the text cannot rule any out).
    """
    if target is not lit:
        options = [claim + [",", "and", *_in_spotlight(o), "."] for o in [lit, *[o for o in others if o is not lit]]]
    else:
        second = others[int(rng.integers(len(others)))]
        colours = [second.colour, *[o.colour for o in others if o is not second]]
        options = [claim + [",", "and", *_has_colour(second, c), "."] for c in colours]
    return _shuffle_in(rng, options[0], options[1:])


def _to_orig(tokens: list[Token]) -> str:
    """VCR's ``*_orig`` text: 1-based object numbers, punctuation attached to the word before."""
    text = ""
    for token in tokens:
        word = " and ".join(str(i + 1) for i in token) if isinstance(token, list) else token
        text += word if word in {".", ",", "?", "!"} or not text else " " + word
    return text


def _match_iter(rng: np.random.Generator, label: int) -> list[int]:
    """VCR's adversarial-matching ranks: 0 for the gold choice, 1..3 for the others."""
    ranks = [int(r) for r in rng.permutation(NUM_CHOICES - 1) + 1]
    ranks.insert(label, 0)
    return ranks


def _sources(rng: np.random.Generator, label: int, annot: int) -> list[int]:
    """Annotation ids the choices came from; the gold choice comes from the record itself."""
    sources = [int(s) for s in rng.integers(0, 30000, size=NUM_CHOICES - 1)]
    sources.insert(label, annot)
    return sources


def _record(
    rng: np.random.Generator,
    annotation: _Annotation,
    objects: list[SceneObject],
    *,
    movie: str,
    stem: str,
    split: str,
    image_id: int,
    question_number: int,
    annot: int,
) -> dict:
    """A VCR record, keys in VCR's order, plus ``question_type``."""
    a, r = annotation.answer_label, annotation.rationale_label
    record = {
        "movie": movie,
        "objects": [obj.name for obj in objects],
        "interesting_scores": [int(rng.integers(-1, 2))],
        "answer_likelihood": str(rng.choice(["likely", "possible", "unlikely"], p=[0.45, 0.5, 0.05])),
        "img_fn": f"{stem}.jpg",
        "metadata_fn": f"{stem}.json",
        "answer_orig": _to_orig(annotation.answers[a]),
        "question_orig": _to_orig(annotation.question),
        "rationale_orig": _to_orig(annotation.rationales[r]),
        "question": annotation.question,
        "answer_match_iter": _match_iter(rng, a),
        "answer_sources": _sources(rng, a, annot),
        "answer_choices": annotation.answers,
        "answer_label": a,
        "rationale_choices": annotation.rationales,
        "rationale_sources": _sources(rng, r, annot),
        "rationale_match_iter": _match_iter(rng, r),
        "rationale_label": r,
        "img_id": f"{split}-{image_id}",
        "question_number": question_number,
        "annot_id": f"{split}-{annot}",
        "match_fold": f"{split}-0",
        "match_index": annot,
        "question_type": annotation.question_type,
    }
    if split == "test":
        for key in _LABEL_KEYS:
            del record[key]
    return record


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vlekit synthetic``."""
    parser.add_argument("out_dir", type=Path, help="output folder (VCR layout: *.jsonl + vcr1images/)")
    parser.add_argument("--num-train", type=int, default=2000, help="training questions (default: 2000)")
    parser.add_argument("--num-val", type=int, default=300, help="validation questions (default: 300)")
    parser.add_argument("--num-test", type=int, default=100, help="unlabeled test questions (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="the data is a pure function of the options and the seed")
    parser.add_argument("--questions-per-image", type=int, default=2,
                        help="questions asked about each generated image (default 2)")
    parser.add_argument("--frame-scale", type=int, default=1,
                        help="frames enlarged this many times, boxes with them (8: VCR's 1920-pixel-wide frames; "
                             "default 1)")


def run(args: argparse.Namespace) -> int:
    """``vlekit synthetic OUT_DIR [--num-train N] [--num-val N] [--num-test N] [--seed S]``."""
    paths = generate_synthetic_vcr(
        args.out_dir, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
        seed=args.seed, questions_per_image=args.questions_per_image, frame_scale=args.frame_scale,
    )
    print(f"wrote {paths.train}, {paths.val}, {paths.test} and images under {paths.images_root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_prep.synthetic ...``: the same as ``vlekit synthetic``."""
    parser = argparse.ArgumentParser(prog="vlekit synthetic", description="Write a synthetic VCR-format dataset.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
