"""Tests of ClassifierScorer on tiny BERT classifiers with random, seeded weights."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from ttsa_guard.errors import ConfigurationError, ModelLoadError
from ttsa_guard.moderation import ClassifierScorer, load_scorer
from ttsa_guard.moderation.classifier import is_benign_label

WORDS = ["[PAD]", "[UNK]", "hello", "friend", "you", "are", "an", "idiot", "stupid", "kind", "very", "nice", "day"]
TEXTS = ["hello friend", "you are an idiot", "stupid", "very very nice day you are kind", "idiot idiot"]


def make_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(vocab={word: i for i, word in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]" if pad else None)


def make_model(labels: list[str], seed: int = 0, **config: Any) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    settings: dict[str, Any] = {
        "vocab_size": len(WORDS),
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 16,
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        # Large random weights, so that scores vary between texts instead of sitting near 0.5.
        "initializer_range": 0.5,
    }
    settings.update(config)
    return BertForSequenceClassification(BertConfig(**settings)).eval()


def direct_logits(model: BertForSequenceClassification, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Logits of one text, unpadded, computed without the scorer."""
    ids = make_tokenizer()(text)["input_ids"][:max_tokens]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize(
    ("label", "num_labels", "benign"),
    [
        ("neutral", 3, True),
        ("safe", 2, True),
        ("OK", 3, True),
        ("Normal", 2, True),
        ("non-toxic", 2, True),
        ("nontoxic", 2, True),
        ("not_hate", 2, True),
        ("none", 4, True),
        ("LABEL_0", 2, True),
        ("unsafe", 2, False),
        ("not safe", 2, False),
        ("toxic", 2, False),
        ("severe_toxic", 6, False),
        ("token", 2, False),
        ("LABEL_0", 3, False),
        ("LABEL_1", 2, False),
    ],
)
def test_benign_label_rule(label: str, num_labels: int, benign: bool) -> None:
    assert is_benign_label(label, num_labels) is benign


def test_single_label_softmax_over_harmful() -> None:
    model = make_model(["neutral", "toxic", "insult"])
    scorer = ClassifierScorer(model, tokenizer=make_tokenizer(), threshold=0.4)

    results = scorer.score(TEXTS)

    for text, result in zip(TEXTS, results, strict=True):
        probabilities = torch.softmax(direct_logits(model, text), dim=-1)
        categories = {"toxic": probabilities[1].item(), "insult": probabilities[2].item()}
        assert result.categories == pytest.approx(categories, abs=1e-5)
        assert result.score == pytest.approx(probabilities[1:].max().item(), abs=1e-6)
        assert result.flagged is (result.score >= 0.4)


def test_multi_label_from_problem_type() -> None:
    model = make_model(["toxic", "insult", "threat"], problem_type="multi_label_classification")
    scorer = ClassifierScorer(model, tokenizer=make_tokenizer())

    [result] = scorer.score(["you are an idiot"])

    logits = direct_logits(model, "you are an idiot")
    assert result.score == pytest.approx(torch.sigmoid(logits).max().item(), abs=1e-6)
    # Guards against a softmax slipping in: the two readings differ a lot here.
    assert abs(result.score - torch.softmax(logits, dim=-1).max().item()) > 0.05


def test_multi_label_override() -> None:
    model = make_model(["neutral", "toxic"])
    scorer = ClassifierScorer(model, tokenizer=make_tokenizer(), multi_label=True)

    [result] = scorer.score(["stupid"])

    assert result.score == pytest.approx(torch.sigmoid(direct_logits(model, "stupid"))[1].item(), abs=1e-6)
    assert list(result.categories) == ["toxic"]


def test_one_label_model_uses_sigmoid() -> None:
    model = make_model(["LABEL_0"])
    scorer = ClassifierScorer(model, tokenizer=make_tokenizer())

    [result] = scorer.score(["idiot idiot"])

    assert result.score == pytest.approx(torch.sigmoid(direct_logits(model, "idiot idiot"))[0].item(), abs=1e-6)
    assert list(result.categories) == ["LABEL_0"]


def test_two_default_labels_use_label_1() -> None:
    model = make_model(["LABEL_0", "LABEL_1"])

    [result] = ClassifierScorer(model, tokenizer=make_tokenizer()).score(["stupid"])

    assert result.score == pytest.approx(torch.softmax(direct_logits(model, "stupid"), -1)[1].item(), abs=1e-6)


def test_harmful_labels_by_name_and_index() -> None:
    model = make_model(["neutral", "toxic", "insult"])
    probabilities = torch.softmax(direct_logits(model, "stupid"), dim=-1)

    [by_name] = ClassifierScorer(model, tokenizer=make_tokenizer(), harmful_labels=["insult"]).score(["stupid"])
    [by_index] = ClassifierScorer(model, tokenizer=make_tokenizer(), harmful_labels=[0]).score(["stupid"])

    assert by_name.score == pytest.approx(probabilities[2].item(), abs=1e-6)
    assert by_index.categories == pytest.approx({"neutral": probabilities[0].item()})


@pytest.mark.parametrize(
    ("labels", "options", "match"),
    [
        (["neutral", "toxic"], {"harmful_labels": ["hate"]}, r"entry 'hate' is not a label"),
        (["neutral", "toxic"], {"harmful_labels": [5]}, r"entry 5 is not a label"),
        (["neutral", "toxic"], {"harmful_labels": []}, r"harmful_labels is empty"),
        (["neutral", "toxic"], {"harmful_labels": "toxic"}, r"single string 'toxic'"),
        (["safe", "neutral"], {}, r"Every label .* looks benign"),
        (["neutral", "toxic"], {"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        (["neutral", "toxic"], {"max_length": 0}, r"max_length must be None or an int >= 1, got 0"),
        (["neutral", "toxic"], {"threshold": 1.5}, r"threshold must be in \(0, 1\], got 1\.5"),
    ],
)
def test_invalid_options_rejected(labels: list[str], options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ClassifierScorer(make_model(labels), tokenizer=make_tokenizer(), **options)


def test_regression_model_rejected() -> None:
    model = make_model(["score"], problem_type="regression")

    with pytest.raises(ConfigurationError, match="regression model"):
        ClassifierScorer(model, tokenizer=make_tokenizer())


def test_built_model_needs_tokenizer() -> None:
    with pytest.raises(ConfigurationError, match="needs tokenizer="):
        ClassifierScorer(make_model(["neutral", "toxic"]))


def test_tokenizer_without_pad_rejected() -> None:
    with pytest.raises(ConfigurationError, match="no pad token"):
        ClassifierScorer(make_model(["neutral", "toxic"]), tokenizer=make_tokenizer(pad=False))


def test_batches_match_single_texts() -> None:
    model = make_model(["neutral", "toxic", "insult"])
    scorer = ClassifierScorer(model, tokenizer=make_tokenizer(), batch_size=2)

    scores = [result.score for result in scorer.score(TEXTS)]

    singles = [torch.softmax(direct_logits(model, text), dim=-1)[1:].max().item() for text in TEXTS]
    assert scores == pytest.approx(singles, abs=1e-5)


def test_truncates_to_max_length() -> None:
    model = make_model(["neutral", "toxic"])
    text = "you are an idiot very very stupid"

    [result] = ClassifierScorer(model, tokenizer=make_tokenizer(), max_length=3).score([text])

    truncated = torch.softmax(direct_logits(model, text, max_tokens=3), dim=-1)[1].item()
    full = torch.softmax(direct_logits(model, text), dim=-1)[1].item()
    assert result.score == pytest.approx(truncated, abs=1e-6)
    assert abs(truncated - full) > 1e-4


def test_default_limit_is_position_count() -> None:
    model = make_model(["neutral", "toxic"])
    text = " ".join(["idiot", "you"] * 12)  # 24 tokens, over the 16 positions

    [result] = ClassifierScorer(model, tokenizer=make_tokenizer()).score([text])

    assert result.score == pytest.approx(torch.softmax(direct_logits(model, text, 16), -1)[1].item(), abs=1e-6)


def test_dropout_disabled() -> None:
    model = make_model(["neutral", "toxic"], hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5).train()
    scorer = ClassifierScorer(model, tokenizer=make_tokenizer())

    first = scorer.score(TEXTS)
    second = scorer.score(TEXTS)

    assert [r.score for r in first] == [r.score for r in second]
    assert not model.training


async def test_async_matches_sync() -> None:
    scorer = ClassifierScorer(make_model(["neutral", "toxic"]), tokenizer=make_tokenizer())

    assert [r.score for r in await scorer.ascore(TEXTS)] == pytest.approx([r.score for r in scorer.score(TEXTS)])


# Loading from a folder


@pytest.fixture
def saved_classifier(tmp_path: Path) -> tuple[Path, BertForSequenceClassification]:
    model = make_model(["neutral", "toxic", "insult"], seed=3)
    model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    return tmp_path, model


def test_loads_lazily_from_folder(saved_classifier: tuple[Path, BertForSequenceClassification]) -> None:
    folder, model = saved_classifier
    scorer = ClassifierScorer(folder, device="cpu")
    assert scorer._loaded is None
    assert scorer.name == f"classifier:{folder}"

    [result] = scorer.score(["you are an idiot"])

    assert scorer._loaded is not None
    expected = torch.softmax(direct_logits(model, "you are an idiot"), dim=-1)[1:].max().item()
    assert result.score == pytest.approx(expected, abs=1e-6)


def test_load_scorer_classifier_name(saved_classifier: tuple[Path, BertForSequenceClassification]) -> None:
    folder, model = saved_classifier

    scorer = load_scorer(f"classifier:{folder}", device="cpu", threshold=0.3)

    assert isinstance(scorer, ClassifierScorer)
    assert scorer.threshold == 0.3
    [result] = scorer.score(["stupid"])
    assert result.score == pytest.approx(torch.softmax(direct_logits(model, "stupid"), -1)[1:].max().item(), abs=1e-6)


def test_concurrent_first_scores_load_once(
    saved_classifier: tuple[Path, BertForSequenceClassification], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = saved_classifier
    scorer = ClassifierScorer(folder, device="cpu")
    loads: list[int] = []
    prepare = scorer._prepare

    def counting_prepare(model: Any, tokenizer: Any) -> Any:
        loads.append(1)
        return prepare(model, tokenizer)

    monkeypatch.setattr(scorer, "_prepare", counting_prepare)
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(scorer.score(["stupid"])[0].score)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert loads == [1]
    assert len(results) == 4
    assert len(set(results)) == 1


def test_missing_folder_raises_load_error(tmp_path: Path) -> None:
    scorer = ClassifierScorer(tmp_path / "missing", device="cpu")

    with pytest.raises(ModelLoadError, match="Could not load the classifier"):
        scorer.score(["hello"])


def test_import_is_lazy() -> None:
    code = (
        "import sys, ttsa_guard; before = 'transformers' in sys.modules; "
        "import ttsa_guard.moderation.classifier, ttsa_guard.moderation.guard_model; "
        "print(before, 'transformers' in sys.modules)"
    )

    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    if output.split()[0] == "True":
        pytest.skip("the ttsa_guard package itself imports transformers")
    assert output.split() == ["False", "False"]
