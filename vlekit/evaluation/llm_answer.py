"""VQA + LLM answers: the VQA head's top answers, the question and a caption -> one fluent answer.

VLE's VQA + LLM workflow: the discriminative VQA model proposes answer candidates with their
probabilities, an (optional) captioning model describes the image, and a text-generation LLM given
the caption, the question and the candidates writes the most reasonable answer as a sentence::

    candidates = top_answers(output["logits"][0], vocabulary, k=5)
    answerer = LLMAnswerer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")   # or a local folder
    result = answerer("What is the man holding?", candidates, caption="A man in the rain.")
    result.answer, result.prompt

Any Hugging Face causal LM loads (``AutoModelForCausalLM`` + ``AutoTokenizer``); a tokenizer with a
chat template gets the prompt as one user message, others get the raw prompt. Decoding is greedy,
so the answer is reproducible.
"""
from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_TEMPLATE",
    "AnswerCandidate",
    "LLMAnswer",
    "LLMAnswerer",
    "LLMNotConfiguredError",
    "build_prompt",
    "top_answers",
]

DEFAULT_TEMPLATE = (
    "Answer a question about an image.\n"
    "{caption_block}"
    "Question: {question}\n"
    "A visual question answering model proposes these answers, most likely first:\n"
    "{candidates}\n"
    "Reply with the most reasonable answer as one short, fluent sentence.\n"
    "Answer:"
)
_TEMPLATE_FIELDS = frozenset({"caption_block", "question", "candidates"})


class LLMNotConfiguredError(ValueError):
    """No text-generation model was given, or the one named cannot be loaded."""


@dataclass(frozen=True)
class AnswerCandidate:
    """One answer proposed by the VQA head, with its probability in ``[0, 1]``."""

    answer: str
    probability: float

    def __post_init__(self) -> None:
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise ValueError(f"AnswerCandidate: answer must be a non-empty string, got {self.answer!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"AnswerCandidate {self.answer!r}: probability must be in [0, 1], got {self.probability}")


def _labels(id2label: Sequence[str] | Mapping[int, str] | Any) -> Sequence[str] | Mapping[int, str]:
    # An AnswerVocabulary (data_prep.vqa_answers) carries its labels in ``id2label``.
    return getattr(id2label, "id2label", id2label)


def top_answers(
    logits: torch.Tensor,
    id2label: Sequence[str] | Mapping[int, str] | Any,
    *,
    k: int = 5,
    probabilities: str = "softmax",
) -> list[AnswerCandidate] | list[list[AnswerCandidate]]:
    """The k most probable answers of VQA logits.

    Args:
        logits: ``[num_labels]`` for one question (-> a list) or ``[B, num_labels]`` (-> a list per row).
        id2label: the answers: a list, a ``{label id: answer}`` mapping, or an ``AnswerVocabulary``.
        k: how many; more than ``num_labels`` gives all of them. Ties go to the lower label id.
        probabilities: ``"softmax"`` over the labels (what VLE's VQA pipeline shows) or
            ``"sigmoid"`` per label (what the BCE-trained head models; they need not sum to 1).
    """
    if probabilities not in ("softmax", "sigmoid"):
        raise ValueError(f"top_answers: probabilities must be 'softmax' or 'sigmoid', got {probabilities!r}")
    if logits.dim() not in (1, 2):
        raise ValueError(f"top_answers: logits must be [num_labels] or [B, num_labels], got {list(logits.shape)}")
    if k < 1:
        raise ValueError(f"top_answers: k must be >= 1, got {k}")
    labels = _labels(id2label)
    if len(labels) != logits.shape[-1]:
        raise ValueError(f"top_answers: {logits.shape[-1]} logits per question but {len(labels)} answers in id2label")
    rows = logits.detach().float().reshape(-1, logits.shape[-1])
    probs = rows.softmax(dim=-1) if probabilities == "softmax" else rows.sigmoid()
    # A stable sort, so equal probabilities keep label order (topk leaves ties unspecified).
    values, indices = (t[:, :k] for t in torch.sort(probs, dim=-1, descending=True, stable=True))
    result = [
        [AnswerCandidate(answer=labels[i], probability=float(p)) for p, i in zip(row_values.tolist(), row_indices.tolist())]
        for row_values, row_indices in zip(values, indices)
    ]
    return result[0] if logits.dim() == 1 else result


def _check_template(template: str) -> None:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if fields != _TEMPLATE_FIELDS:
        raise ValueError(f"prompt template must use exactly the fields {sorted(_TEMPLATE_FIELDS)}, got {sorted(fields)}")


def build_prompt(
    question: str, candidates: Sequence[AnswerCandidate], *, caption: str | None = None, template: str = DEFAULT_TEMPLATE
) -> str:
    """The LLM prompt: the caption (when given), the question and the candidates as
    ``- answer (87.2%)`` lines in the given order.

    ``template`` is a ``str.format`` string with the fields ``{caption_block}`` (``"Image
    caption: ...\\n"`` or empty), ``{question}`` and ``{candidates}``.
    """
    _check_template(template)
    if not question.strip():
        raise ValueError("build_prompt: the question is empty")
    if not candidates:
        raise ValueError("build_prompt: no answer candidates; pass top_answers(...) of the VQA logits")
    lines = "\n".join(f"- {c.answer} ({100 * c.probability:.1f}%)" for c in candidates)
    caption_block = f"Image caption: {caption.strip()}\n" if caption and caption.strip() else ""
    return template.format(caption_block=caption_block, question=question.strip(), candidates=lines)


@dataclass(frozen=True)
class LLMAnswer:
    """What :class:`LLMAnswerer` returns.

    ``answer`` is the LLM's text, stripped and cut at its first blank line; when the LLM produced
    nothing it is the VQA head's top answer and ``from_llm`` is False. ``prompt`` is the filled
    template and ``model_input`` the exact text tokenized (the prompt inside the chat template when
    the tokenizer has one).
    """

    question: str
    caption: str | None
    candidates: tuple[AnswerCandidate, ...]
    prompt: str
    model_input: str
    answer: str
    from_llm: bool
    model: str
    new_tokens: int

    @property
    def vqa_answer(self) -> str:
        """The VQA head's own best answer."""
        return self.candidates[0].answer


class LLMAnswerer:
    """A Hugging Face causal LM that turns VQA candidates into a fluent answer.

    Build it with :meth:`from_pretrained` (hub name or local folder), or from an already loaded
    ``model`` and ``tokenizer`` (keyword-only). ``use_chat_template=None`` uses the tokenizer's chat
    template when it has one.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        tokenizer: Any,
        name: str,
        max_new_tokens: int = 48,
        template: str = DEFAULT_TEMPLATE,
        use_chat_template: bool | None = None,
    ) -> None:
        if model is None or tokenizer is None:
            raise LLMNotConfiguredError(
                "LLMAnswerer: needs both a text-generation model and its tokenizer; "
                "use LLMAnswerer.from_pretrained(hub name or local folder)"
            )
        if max_new_tokens < 1:
            raise ValueError(f"LLMAnswerer: max_new_tokens must be >= 1, got {max_new_tokens}")
        _check_template(template)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError(f"LLMAnswerer: use_chat_template=True but the tokenizer of {name!r} has no chat template")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.template = template
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        max_new_tokens: int = 48,
        template: str = DEFAULT_TEMPLATE,
        use_chat_template: bool | None = None,
    ) -> LLMAnswerer:
        """Load a causal LM and its tokenizer from a local folder or a Hugging Face hub name.

        An existing folder is loaded from disk; anything else is a hub name (``local_files_only``
        restricts it to the local cache, as an offline machine needs).

        Raises:
            LLMNotConfiguredError: no model named, or the name or folder holds no loadable causal LM.
        """
        if name_or_path is None or not str(name_or_path).strip():
            raise LLMNotConfiguredError(
                "VQA + LLM: no text-generation model given. Pass a Hugging Face hub name of a causal LM "
                "(e.g. 'Qwen/Qwen2.5-0.5B-Instruct') or a local folder holding its config.json, weights and "
                "tokenizer files; without one, use the VQA head's answers (top_answers) alone."
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = str(name_or_path)
        local = Path(source).is_dir()
        if local and not (Path(source) / "config.json").is_file():
            raise LLMNotConfiguredError(
                f"VQA + LLM: local folder {source} has no config.json, so it holds no saved model; save one there "
                "with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)"
            )
        where = f"local folder {source}" if local else f"hub name {source!r}"
        options: dict[str, Any] = {"local_files_only": local_files_only}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **options)
            model = AutoModelForCausalLM.from_pretrained(source, **options, **({"dtype": dtype} if dtype is not None else {}))
        except (OSError, ValueError, KeyError) as error:
            hint = ("it must hold config.json, the weights and the tokenizer files of a causal LM"
                    if local else
                    "check the name; an offline machine needs it in the local Hugging Face cache, or a local folder")
            raise LLMNotConfiguredError(f"VQA + LLM: could not load a text-generation model from {where}: "
                                        f"{type(error).__name__}: {str(error).rstrip('.')}. ({hint})") from error
        return cls(model=model.to(device), tokenizer=tokenizer, name=source, max_new_tokens=max_new_tokens,
                   template=template, use_chat_template=use_chat_template)

    def model_input(self, prompt: str) -> str:
        """The text given to the tokenizer: the prompt, or the prompt as one chat user turn."""
        if not self.use_chat_template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    @torch.no_grad()
    def __call__(
        self, question: str, candidates: Sequence[AnswerCandidate], *, caption: str | None = None
    ) -> LLMAnswer:
        """Ask the LLM for a fluent answer to ``question`` given the VQA ``candidates`` (best first)."""
        candidates = tuple(candidates)
        prompt = build_prompt(question, candidates, caption=caption, template=self.template)
        text = self.model_input(prompt)
        # A chat template already writes the special tokens it wants.
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.use_chat_template)
        device = next(self.model.parameters()).device
        inputs = {key: value.to(device) for key, value in inputs.items() if key in ("input_ids", "attention_mask")}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        output = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
            **({"pad_token_id": pad} if pad is not None else {}),
        )
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        generated = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip().split("\n\n")[0].strip()
        return LLMAnswer(
            question=question, caption=caption, candidates=candidates, prompt=prompt, model_input=text,
            answer=generated or candidates[0].answer, from_llm=bool(generated), model=self.name,
            new_tokens=int(new_tokens.numel()),
        )
