"""`compress eval` end to end against scikit-learn: the numbers in its report are what an
independent implementation computes from the model's own logits on the same images — for
multiclass (accuracy, macro P/R/F1, FAR/FRR of class-vs-rest acceptance on softmax
probabilities) and multilabel (micro/macro F1, mAP, subset accuracy, FAR/FRR on sigmoid
probabilities)."""
import json

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from compress.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--model", "mobilenet_v2", "--width-mult", "0.25", "--image-size", "16", "--train-limit", "128",
        "--epochs", "1", "--max-steps-per-epoch", "3", "--batch-size", "32", "--bn-recalibrate", "64",
        "--no-progress"]
THRESHOLD = 0.3  # not 0.5, so a threshold that is not passed through shows


def _logits_and_targets(path):
    from compress.artifact import load_model
    from compress.data import load_data_for_model
    from compress.evaluate import predict

    model, meta = load_model(path)
    return predict(model, load_data_for_model(meta).test)


def _far_frr(positive: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    tn, fp, fn, tp = skm.confusion_matrix(positive.ravel(), (probs >= THRESHOLD).ravel(), labels=[0, 1]).ravel()
    return fp / (fp + tn), fn / (fn + tp)


def _eval(path, tmp_path):
    report = tmp_path / "eval.json"
    assert main(["eval", str(path), "--threshold", str(THRESHOLD), "--json", str(report)]) == 0
    return json.loads(report.read_text())["metrics"]


def test_multiclass_report_matches_scikit_learn(tmp_path):
    out = tmp_path / "mc.safetensors"
    assert main(["train", *TINY, "--data", "digits", "-o", str(out)]) == 0
    m = _eval(out, tmp_path)
    logits, y = _logits_and_targets(out)
    probs = softmax(logits.astype(np.float64), axis=1)
    pred = probs.argmax(1)
    assert m["n"] == len(y) == 270
    assert m["top1"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["top5"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=5, labels=range(10)))
    for ours, avg in (("precision_macro", skm.precision_score), ("recall_macro", skm.recall_score),
                      ("f1_macro", skm.f1_score)):
        assert m[ours] == pytest.approx(avg(y, pred, average="macro", labels=range(10), zero_division=0)), ours
    far, frr = _far_frr(label_binarize(y, classes=range(10)), probs)
    assert (m["far"], m["frr"], m["threshold"]) == (pytest.approx(far), pytest.approx(frr), THRESHOLD)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(10)).tolist()


def test_multilabel_report_matches_scikit_learn(tmp_path):
    out = tmp_path / "ml.safetensors"
    assert main(["train", *TINY, "--data", "digits-multilabel", "-o", str(out)]) == 0
    m = _eval(out, tmp_path)
    logits, y = _logits_and_targets(out)
    y = y.astype(int)
    probs = expit(logits.astype(np.float64))
    pred = (probs >= THRESHOLD).astype(int)
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(y, pred))
    present = y.sum(0) > 0  # AP is undefined for a label with no positive example
    assert m["map"] == pytest.approx(skm.average_precision_score(y[:, present], probs[:, present], average="macro"))
    far, frr = _far_frr(y, probs)
    assert (m["far"], m["frr"]) == (pytest.approx(far), pytest.approx(frr))
