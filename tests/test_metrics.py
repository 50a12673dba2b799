"""compress.metrics against scikit-learn on random inputs; compress.evaluate on a fixed model."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from compress import metrics as M


@pytest.fixture(params=[0, 1, 2])
def multiclass_case(request):
    rng = np.random.default_rng(request.param)
    n, k = 300, 7
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += rng.uniform(0, 2.5, n)  # better than chance, not perfect
    return y, logits, k


def test_topk_accuracy_matches_sklearn(multiclass_case):
    y, logits, k = multiclass_case
    assert M.topk_accuracy(y, logits, 1) == pytest.approx(skm.accuracy_score(y, logits.argmax(1)))
    for top in (2, 5):
        assert M.topk_accuracy(y, logits, top) == pytest.approx(
            skm.top_k_accuracy_score(y, logits, k=top, labels=np.arange(k)))


def test_confusion_and_prf_match_sklearn(multiclass_case):
    y, logits, k = multiclass_case
    pred = logits.argmax(1)
    pred[pred == 3] = 2  # class 3 is never predicted: zero-division path
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, k), skm.confusion_matrix(y, pred, labels=range(k)))
    prf = M.precision_recall_f1(y, pred, k)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    np.testing.assert_allclose(prf["precision"], p)
    np.testing.assert_allclose(prf["recall"], r)
    np.testing.assert_allclose(prf["f1"], f)
    np.testing.assert_array_equal(prf["support"], s)
    assert prf["f1"].mean() == pytest.approx(skm.f1_score(y, pred, average="macro", labels=range(k), zero_division=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = 200, 6
    y = (rng.random((n, k)) < 0.3).astype(int)
    y[0] = 1  # every label has a positive
    scores = np.round(rng.normal(size=(n, k)) + 1.5 * y, 1)  # rounding creates tied scores
    pred = (scores >= 0.8).astype(int)
    prf = M.multilabel_prf(y, pred)
    assert prf["micro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert prf["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    np.testing.assert_allclose(prf["per_label"]["f1"], skm.f1_score(y, pred, average=None, zero_division=0))
    np.testing.assert_allclose(prf["per_label"]["precision"],
                               skm.precision_score(y, pred, average=None, zero_division=0))
    m_ap, ap = M.mean_average_precision(y, scores)
    np.testing.assert_allclose(ap, skm.average_precision_score(y, scores, average=None))
    assert m_ap == pytest.approx(skm.average_precision_score(y, scores, average="macro"))
    assert M.exact_match(y, pred) == pytest.approx(skm.accuracy_score(y, pred))


def test_average_precision_edge_cases():
    assert M.average_precision([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(1.0)
    assert M.average_precision([0, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx(1 / 3)
    assert M.average_precision([0, 0], [0.3, 0.2]) == 0.0


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_far_frr_match_sklearn_confusion(multiclass_case, threshold):
    y, logits, k = multiclass_case
    probs = M.softmax(logits)
    r = M.class_vs_rest_far_frr(y, probs, threshold)
    positive = np.zeros_like(probs, dtype=int)
    positive[np.arange(len(y)), y] = 1
    tn, fp, fn, tp = skm.confusion_matrix(positive.ravel(), (probs >= threshold).ravel().astype(int)).ravel()
    assert r["threshold"] == threshold
    assert r["far"] == pytest.approx(fp / (fp + tn))
    assert r["frr"] == pytest.approx(fn / (fn + tp))
    assert r["negatives"] == fp + tn and r["positives"] == fn + tp


def test_far_frr_extremes_and_eer():
    positive = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.7, 0.6, 0.1, 0.4, 0.3])
    assert M.far_frr(positive, scores, 0.0) == {"threshold": 0.0, "far": 1.0, "frr": 0.0, "negatives": 3, "positives": 3}
    top = M.far_frr(positive, scores, 0.95)
    assert (top["far"], top["frr"]) == (0.0, 1.0)
    eq = M.equal_error_threshold(positive, scores)
    assert eq["far"] == pytest.approx(1 / 3) and eq["frr"] == pytest.approx(1 / 3)
    # the reported threshold reproduces the rates
    again = M.far_frr(positive, scores, eq["threshold"])
    assert (again["far"], again["frr"]) == (eq["far"], eq["frr"])


def test_multiclass_summary_fields(multiclass_case):
    y, logits, k = multiclass_case
    out = M.multiclass_metrics(y, logits, labels=[f"c{i}" for i in range(k)])
    assert out["top1"] <= out["top5"] <= 1.0
    assert set(out["per_class"]) == {f"c{i}" for i in range(k)}
    assert np.asarray(out["confusion_matrix"]).sum() == len(y)
    assert 0 <= out["far"] <= 1 and 0 <= out["frr"] <= 1 and out["threshold"] == 0.5


def test_evaluate_on_a_fixed_linear_model():
    from compress.evaluate import evaluate

    class Fixed(torch.nn.Module):  # logits = the first 3 pixels: predictions are known in advance
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x.flatten(1)[:, :3]

    x = torch.full((6, 1, 1, 3), -5.0)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    pred = torch.tensor([0, 1, 2, 1, 1, 0])  # 4 of 6 right
    x[torch.arange(6), 0, 0, pred] = 5.0
    ds = torch.utils.data.TensorDataset(x, y)
    out = evaluate(Fixed(), ds, "multiclass", batch_size=4)
    assert out["top1"] == pytest.approx(4 / 6)
    assert out["top5"] == 1.0
    assert out["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    expected_loss = torch.nn.functional.cross_entropy(x.flatten(1), y).item()
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-5)
    multi = evaluate(Fixed(), torch.utils.data.TensorDataset(x, torch.nn.functional.one_hot(y, 3).float()),
                     "multilabel")
    assert multi["exact_match"] == pytest.approx(4 / 6) and "map" in multi and "f1_micro" in multi
