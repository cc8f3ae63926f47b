"""Constants shared by the VCR data pipeline."""

# VCR's fixed list of gender-neutral person names (r2c / VLE).
PERSON_NAMES: tuple[str, ...] = (
    "Casey", "Riley", "Jessie", "Jackie", "Avery", "Jaime", "Peyton", "Kerry",
    "Jody", "Kendall", "Payton", "Skyler", "Frankie", "Pat", "Quinn",
)

# CLIP's pixel normalisation: CLIPImageProcessor's defaults, which every OpenAI CLIP checkpoint (and
# VLE's processor) uses; the one definition, for the data pipeline and the clip-vision encoder.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

NUM_CHOICES = 4
GEOMETRY_MODES: tuple[str, ...] = ("squash", "letterbox", "center-crop", "vle-compat")
TASKS: tuple[str, ...] = ("q2a", "qa2r")  # VCR's multiple-choice tasks
VQA_TASK = "vqa"  # VQA v2 (data_prep.vqa): one question, a vocabulary of answers

# Pixels handed to the model: normalised float32, or 8-bit RGB the model normalises on its device.
PIXEL_DTYPES: tuple[str, ...] = ("float32", "uint8")

# How the default mode names persons (data_prep.text): the query's persons first, then the rest in object order
# (the default); all in object order; or by first mention over the record (runs saved before the option).
PERSON_NAMINGS: tuple[str, ...] = ("by-query", "by-object", "by-first-mention")

# Preprocessing modes: vlekit's own ("none") or the official VLE VCR pipeline reproduced ("vle").
COMPAT_MODES: tuple[str, ...] = ("none", "vle")

# A trained model folder (``RUN/model``, written by ``vlekit train``): the preprocessing it was trained with
# (resolved, the image side included) and its tokenizer. ``vlekit check-data --run`` reads both.
PREPROCESS_FILE = "data.json"
TOKENIZER_DIR = "tokenizer"
MODEL_DIR = "model"
