"""Prompt and label templates of the reference `Formatter` (`src/data/format.py` of reasoning-teacher).

Every text field (question, answer, rationale, step-1 prompt) is `.strip()`ped first, as the reference
code does (its "REPRODUCTION NOTE": the paper's GPT-3 runs did not strip). One consequence kept on
purpose: the Zero-shot-CoT step-2 prompt has no space between "step by step." and the rationale.

Templates ("prediction templates" in the reference) and the model types they exist for:

| template         | decoder input                      | encoder-decoder input  | label (decoder / enc-dec)               |
|------------------|------------------------------------|------------------------|-----------------------------------------|
| zs               | "Q: {q}\\n\\nA:"                      | "question: {q}"        | -                                       |
| zs_cot (step 1)  | "Q: {q}\\nA: Let's think step by step." | (decoder only)       | -                                       |
| fs_cot           | "{few-shot prompt}\\nQ: {q}\\nA:"      | same                   | -                                       |
| ft_token         | "{q} ###"                          | "{q}"                  | " {a}" / "{a}"                          |
| ft_cot_token     | "{q} ###"                          | "{q}"                  | " {r} --> {a}" / "{r} --> {a}"          |
| ft_cot_natural   | "Q: {q}\\n\\nA: Let's think step by step.\\n\\n" | (decoder only) | " {r}\\n\\nTherefore the answer is {a}" |
| sbs_predict      | "predict: {q} ###"                 | "predict: {q}"         | " {a}" / "{a}"                          |
| sbs_explain      | "explain: {q} ###"                 | "explain: {q}"         | " {r}" / "{r}"                          |

The two `sbs_` templates are Distilling step-by-step's two tasks (Hsieh et al., 2023; its "predict: " and
"explain: " input prefixes): the student learns both, and is asked to `predict` at evaluation.

Labels carry no stop phrase and no EOS: the trainer appends the tokenizer's EOS for decoders (T5
tokenizers append theirs). Quirk kept: the ft_cot_natural label says "Therefore the answer is" while
its evaluation prefix is "Therefore, the answer is" (with a comma), exactly as in the reference.
"""

from __future__ import annotations

MODEL_TYPES = ("decoder", "encoder_decoder")
TEMPLATES = ("zs", "zs_cot", "fs_cot", "ft_token", "ft_cot_token", "ft_cot_natural", "sbs_predict", "sbs_explain")
FINETUNE_TEMPLATES = ("ft_token", "ft_cot_token", "ft_cot_natural", "sbs_predict", "sbs_explain")
# The template each fine-tuning method is evaluated (and asked) with (the reference's token templates).
METHOD_TEMPLATE = {"ft": "ft_token", "ft_cot": "ft_cot_token", "step_by_step": "sbs_predict"}
# The templates each method trains on: one sample per template for every question.
METHOD_TRAIN_TEMPLATES = {
    "ft": ("ft_token",),
    "ft_cot": ("ft_cot_token",),
    "step_by_step": ("sbs_predict", "sbs_explain"),
}
STEP_BY_STEP_PREFIXES = {"sbs_predict": "predict: ", "sbs_explain": "explain: "}

# Evaluation prefixes per prediction template (reference PREDICTION_PREFIXES): the answer is parsed
# from the first candidate after the prefix, or from the last candidate if the prefix is missing.
FS_COT_PREFIX = "The answer is"
FT_COT_NATURAL_PREFIX = "Therefore, the answer is"
FT_COT_TOKEN_PREFIX = "-->"
PREDICTION_PREFIXES: dict[str | None, str | None] = {
    None: None,
    "zs": None,
    "ft_natural": None,
    "ft_token": None,
    "fs_cot": FS_COT_PREFIX,
    "zs_cot": None,
    "ft_cot_natural": FT_COT_NATURAL_PREFIX,
    "ft_cot_token": FT_COT_TOKEN_PREFIX,
    "sbs_predict": None,  # the completion is the answer alone
    "sbs_explain": None,
}

ZS_COT_TRIGGER = "Let's think step by step."
ANSWER_TRIGGER = "\nTherefore, the answer is"  # no per-task answer-format suffix in reasoning-teacher
FT_INPUT_SUFFIX = " ###"  # decoder fine-tuning input separator


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type '{model_type}'; expected one of: {', '.join(MODEL_TYPES)}")


def zs_cot_step1_prompt(question: str) -> str:
    """Teacher step 1 (reasoning): "Q: {q}\\nA: Let's think step by step."."""
    return f"Q: {question.strip()}\nA: {ZS_COT_TRIGGER}"


def zs_cot_step2_prompt(step1_prompt: str, rationale: str) -> str:
    """Teacher step 2 (answer): "{step-1 prompt}{rationale}\\nTherefore, the answer is" (both stripped)."""
    return f"{step1_prompt.strip()}{rationale.strip()}{ANSWER_TRIGGER}"


def zero_shot_prompt(question: str, model_type: str) -> str:
    """Zero-shot baseline: decoder "Q: {q}\\n\\nA:", encoder-decoder "question: {q}" (SQuAD style for T5)."""
    _check_model_type(model_type)
    q = question.strip()
    return f"Q: {q}\n\nA:" if model_type == "decoder" else f"question: {q}"


def fs_cot_prompt(question: str, few_shot_prompt: str) -> str:
    """Few-shot-CoT: the task's exemplars (unstripped, as stored) + "\\nQ: {q}\\nA:" (both model types)."""
    if not few_shot_prompt:
        raise ValueError("fs_cot needs the task's few-shot-CoT prompt; this task has none (tracking_shuffled_objects)")
    return f"{few_shot_prompt}\nQ: {question.strip()}\nA:"


def finetune_input(template: str, model_type: str, question: str) -> str:
    """Student input for fine-tuning and for its evaluation (no label part)."""
    _check_model_type(model_type)
    q = question.strip()
    if template in ("ft_token", "ft_cot_token"):
        return f"{q}{FT_INPUT_SUFFIX}" if model_type == "decoder" else q
    if template == "ft_cot_natural":
        _decoder_only(template, model_type)
        return f"Q: {q}\n\nA: {ZS_COT_TRIGGER}\n\n"
    if template in STEP_BY_STEP_PREFIXES:
        q = STEP_BY_STEP_PREFIXES[template] + q
        return f"{q}{FT_INPUT_SUFFIX}" if model_type == "decoder" else q
    raise ValueError(f"unknown fine-tune template '{template}'; expected one of: {', '.join(FINETUNE_TEMPLATES)}")


def finetune_label(template: str, model_type: str, answer: str, rationale: str | None = None) -> str:
    """Student target text (no EOS, no stop phrase). `rationale` is required for the CoT templates."""
    _check_model_type(model_type)
    a = answer.strip()
    lead = " " if model_type == "decoder" else ""  # decoder labels continue the input after a space
    if template in ("ft_token", "sbs_predict"):
        return f"{lead}{a}"
    if template not in ("ft_cot_token", "ft_cot_natural", "sbs_explain"):
        raise ValueError(f"unknown fine-tune template '{template}'; expected one of: {', '.join(FINETUNE_TEMPLATES)}")
    if rationale is None:
        raise ValueError(f"template '{template}' needs a rationale; got None")
    r = rationale.strip()
    if template == "sbs_explain":
        return f"{lead}{r}"
    if template == "ft_cot_token":
        return f"{lead}{r} {FT_COT_TOKEN_PREFIX} {a}"
    _decoder_only(template, model_type)
    return f" {r}\n\nTherefore the answer is {a}"


def _decoder_only(template: str, model_type: str) -> None:
    if model_type != "decoder":
        raise ValueError(f"template '{template}' exists only for model_type 'decoder'; got '{model_type}'")


def prompt(template: str, model_type: str, question: str, few_shot_prompt: str | None = None) -> str:
    """The inference-time input for any template (zs_cot = step 1); used to show or evaluate a task."""
    if template == "zs":
        return zero_shot_prompt(question, model_type)
    if template == "zs_cot":
        _check_model_type(model_type)
        _decoder_only(template, model_type)
        return zs_cot_step1_prompt(question)
    if template == "fs_cot":
        _check_model_type(model_type)
        return fs_cot_prompt(question, few_shot_prompt or "")
    if template in FINETUNE_TEMPLATES:
        return finetune_input(template, model_type, question)
    raise ValueError(f"unknown template '{template}'; expected one of: {', '.join(TEMPLATES)}")
