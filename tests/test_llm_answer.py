"""VQA + LLM answers (vlekit/evaluation/llm_answer.py) with a tiny random causal LM built and saved in the test."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from data_prep.vqa_answers import AnswerVocabulary
from vlekit.evaluation.llm_answer import (
    DEFAULT_TEMPLATE,
    AnswerCandidate,
    LLMAnswerer,
    LLMNotConfiguredError,
    build_prompt,
    top_answers,
)

CANDIDATES = (AnswerCandidate(answer="umbrella", probability=0.8), AnswerCandidate(answer="stick", probability=0.15))


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = set(re.findall(r"\w+|[^\w\s]", DEFAULT_TEMPLATE + " Image caption what is the man holding a in rain umbrella stick"))
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<eos>", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 1-layer GPT-2 and its word-level tokenizer, saved as a local model folder."""
    folder = tmp_path_factory.mktemp("tiny_lm")
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- candidates and prompt -------------------------------------------------------------------------


def test_top_answers_from_logits() -> None:
    vocab = AnswerVocabulary(id2label=("yes", "no", "umbrella", "stick"))
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0], [4.0, 0.0, 0.0, 0.0]])
    rows = top_answers(logits, vocab, k=2)
    probs = logits.softmax(-1)
    assert [[c.answer for c in row] for row in rows] == [["umbrella", "stick"], ["yes", "no"]]
    assert rows[0][0].probability == pytest.approx(probs[0, 2].item())
    single = top_answers(logits[0], ["yes", "no", "umbrella", "stick"], k=10, probabilities="sigmoid")
    assert [c.answer for c in single] == ["umbrella", "stick", "no", "yes"]
    assert single[0].probability == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    with pytest.raises(ValueError, match="4 logits per question but 3 answers"):
        top_answers(logits, ["yes", "no", "umbrella"])
    with pytest.raises(ValueError, match="'softmax' or 'sigmoid'"):
        top_answers(logits, vocab, probabilities="argmax")


def test_prompt_holds_caption_question_and_candidates_in_order() -> None:
    prompt = build_prompt(" What is the man holding? ", CANDIDATES, caption="A man in the rain.")
    assert "Image caption: A man in the rain.\nQuestion: What is the man holding?\n" in prompt
    assert "- umbrella (80.0%)\n- stick (15.0%)\n" in prompt
    assert prompt.endswith("Answer:")
    without = build_prompt("What is the man holding?", CANDIDATES)
    assert "caption" not in without and without.startswith("Answer a question about an image.\nQuestion:")
    custom = build_prompt("Q?", CANDIDATES[:1], template="{caption_block}{question} | {candidates} ->")
    assert custom == "Q? | - umbrella (80.0%) ->"


def test_prompt_errors() -> None:
    with pytest.raises(ValueError, match="no answer candidates"):
        build_prompt("Q?", [])
    with pytest.raises(ValueError, match="the question is empty"):
        build_prompt("  ", CANDIDATES)
    with pytest.raises(ValueError, match=r"exactly the fields \['candidates', 'caption_block', 'question'\], got \['question'\]"):
        build_prompt("Q?", CANDIDATES, template="{question}")
    with pytest.raises(ValueError, match="probability must be in \\[0, 1\\]"):
        AnswerCandidate(answer="yes", probability=1.5)


# --- the call ----------------------------------------------------------------------------------------


def _greedy(model: GPT2LMHeadModel, ids: list[int], steps: int, eos: int) -> list[int]:
    """Greedy decoding written out: one full forward per new token."""
    new: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids + new])).logits[0, -1]
        token = int(logits.argmax())
        new.append(token)
        if token == eos:
            break
    return new


def test_loads_a_local_folder_and_returns_the_greedy_answer(tiny_lm_dir: Path) -> None:
    answerer = LLMAnswerer.from_pretrained(tiny_lm_dir, max_new_tokens=6)
    assert not answerer.use_chat_template
    result = answerer("What is the man holding?", CANDIDATES, caption="A man in the rain.")
    assert result.prompt == build_prompt("What is the man holding?", CANDIDATES, caption="A man in the rain.")
    assert result.model_input == result.prompt
    assert result.model == str(tiny_lm_dir) and result.candidates == CANDIDATES and result.vqa_answer == "umbrella"

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_lm_dir)
    model = GPT2LMHeadModel.from_pretrained(tiny_lm_dir).eval()
    expected = _greedy(model, tokenizer(result.prompt)["input_ids"], 6, tokenizer.eos_token_id)
    assert result.new_tokens == len(expected)
    text = tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert result.from_llm == bool(text)
    assert result.answer == (text if text else "umbrella")


def test_chat_template_wraps_the_prompt(tiny_lm_dir: Path) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_lm_dir)
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    model = GPT2LMHeadModel.from_pretrained(tiny_lm_dir)
    answerer = LLMAnswerer(model=model, tokenizer=tokenizer, name="tiny", max_new_tokens=3)
    result = answerer("What is the man holding?", CANDIDATES)
    assert answerer.use_chat_template
    assert result.model_input == f"[user] {result.prompt}\n[assistant]"
    plain = LLMAnswerer(model=model, tokenizer=tokenizer, name="tiny", max_new_tokens=3, use_chat_template=False)
    assert plain("What is the man holding?", CANDIDATES).model_input == result.prompt


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "   "])
def test_no_model_given_says_what_to_pass(name: str | None) -> None:
    with pytest.raises(LLMNotConfiguredError, match="no text-generation model given. Pass a Hugging Face hub name"):
        LLMAnswerer.from_pretrained(name)


def test_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LLMNotConfiguredError, match=f"local folder {re.escape(str(tmp_path))} has no config.json"):
        LLMAnswerer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")  # a config but no tokenizer or weights
    with pytest.raises(LLMNotConfiguredError, match=f"(?s)from local folder {re.escape(str(tmp_path))}: .*must hold"):
        LLMAnswerer.from_pretrained(tmp_path)


def test_unknown_hub_name_offline_is_a_clear_error() -> None:
    with pytest.raises(LLMNotConfiguredError, match="(?s)from hub name 'no-such-org/no-such-model'.*local Hugging Face cache"):
        LLMAnswerer.from_pretrained("no-such-org/no-such-model", local_files_only=True)


def test_missing_model_or_tokenizer(tiny_lm_dir: Path) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_lm_dir)
    with pytest.raises(LLMNotConfiguredError, match="needs both a text-generation model and its tokenizer"):
        LLMAnswerer(model=None, tokenizer=tokenizer, name="x")
    with pytest.raises(ValueError, match="use_chat_template=True but the tokenizer of 'x' has no chat template"):
        LLMAnswerer(model=GPT2LMHeadModel.from_pretrained(tiny_lm_dir), tokenizer=tokenizer, name="x", use_chat_template=True)
