"""One preprocessing config: DataConfig's options are PreprocessConfig's run-side fields; the model supplies the rest."""
from __future__ import annotations

import dataclasses

import pytest

from data_prep.preprocess import MODEL_OPTIONS, RUN_OPTIONS, PreprocessConfig
from vlekit.runs.experiment import DataConfig


def test_data_config_holds_every_run_option_with_the_same_default() -> None:
    assert set(RUN_OPTIONS) | set(MODEL_OPTIONS) == set(PreprocessConfig.option_names())
    defaults = {f.name: f.default for f in dataclasses.fields(PreprocessConfig)}
    data = DataConfig()
    assert list(data.preprocess_options()) == list(RUN_OPTIONS)
    assert data.preprocess_options() == {name: defaults[name] for name in RUN_OPTIONS}


@pytest.mark.parametrize(
    ("options", "message"),
    [({"compat": "official"}, "compat='official' is not supported"),
     ({"compat": "vle", "geometry": "letterbox"}, "whose geometry is 'vle-compat'"),
     ({"max_length": 3}, "too short")],
)
def test_a_bad_data_option_fails_when_the_config_is_made(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig(**options)


def test_the_model_supplies_image_size_patch_and_normalisation() -> None:
    from data_prep.tokenizer import build_word_tokenizer
    from vlekit import build_model
    from vlekit.runs.folder import make_preprocessor

    model = build_model()
    model.vision_encoder.image_mean, model.vision_encoder.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    record = {"question": ["why", "?"], "answer_choices": [["it"]] * 4, "rationale_choices": [["so"]] * 4, "objects": []}
    tokenizer = build_word_tokenizer([record])
    preprocessor = make_preprocessor(tokenizer, model, images_root=None, **DataConfig(task="qa2r").preprocess_options())
    config = preprocessor.config
    assert (config.image_size, config.patch_size) == (model.vision_encoder.image_size, model.vision_encoder.patch_size)
    assert (config.image_mean, config.image_std, config.task) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "qa2r")
    with pytest.raises(TypeError, match="image_size come from the model"):
        make_preprocessor(tokenizer, model, images_root=None, task="q2a", image_size=64)
