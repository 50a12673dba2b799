"""compress.metrics against independent references: scikit-learn (and scipy) for every number,
hand-made cases whose answers follow from the definitions, and the wiring of the two summaries
``eval`` prints (multiclass_metrics, multilabel_metrics) field by field.

FAR and FRR are checked against scikit-learn's confusion matrix of the (claim, accepted) pairs:
FAR = FP / (FP + TN) (impostor claims accepted), FRR = FN / (FN + TP) (genuine claims rejected)."""
import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as scipy_softmax
from sklearn import metrics as skm

from compress import metrics as M


def sk_far_frr(positive, accepted):
    tn, fp, fn, tp = skm.confusion_matrix(np.ravel(positive).astype(int), np.ravel(accepted).astype(int),
                                          labels=[0, 1]).ravel()
    return fp / (fp + tn), fn / (fn + tp)


def brute_force_eer(positive, scores):
    """EER by the definition: try every score as the threshold (accept when score >= t)."""
    positive, scores = np.ravel(positive).astype(bool), np.ravel(scores)
    best = None
    for t in sorted(set(scores.tolist())):
        acc = scores >= t
        far = (acc & ~positive).sum() / max((~positive).sum(), 1)
        frr = (~acc & positive).sum() / max(positive.sum(), 1)
        if best is None or abs(far - frr) < abs(best[1] - best[2]):
            best = (t, far, frr)
    return best


@pytest.fixture(params=[3, 4])
def mc(request):
    """Multiclass: 240 samples, 6 classes, better than chance; class 5 never true, class 4 rarely."""
    rng = np.random.default_rng(request.param)
    n, k = 240, 6
    y = rng.choice(5, size=n, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    logits = rng.normal(size=(n, k)) * 1.5
    logits[np.arange(n), y] += rng.uniform(0, 3, n)
    return y, logits, k


@pytest.fixture(params=[5, 6])
def ml(request):
    """Multilabel: 200 samples, 5 labels; label 4 has no positive at all."""
    rng = np.random.default_rng(request.param)
    n, k = 200, 5
    y = (rng.random((n, k)) < [0.4, 0.3, 0.2, 0.1, 0.0]).astype(int)
    logits = rng.normal(size=(n, k)) * 1.5 + 2.0 * y - 0.5
    return y, logits, k


# ----------------------------------------------------------------------------- the multiclass summary

def test_multiclass_summary_against_sklearn(mc):
    y, logits, k = mc
    labels = ["zero", "one", "two", "three", "four", "five"]
    out = M.multiclass_metrics(y, logits, labels=labels)
    probs = scipy_softmax(logits, axis=1)
    pred = probs.argmax(1)
    assert out["n"] == len(y) and isinstance(out["n"], int)
    assert out["top1"] == pytest.approx(skm.accuracy_score(y, pred))
    assert out["top5"] == pytest.approx(skm.top_k_accuracy_score(y, logits, k=5, labels=np.arange(k)))
    assert out["top1"] < out["top5"] < 1.0
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    assert out["precision_macro"] == pytest.approx(p.mean())
    assert out["recall_macro"] == pytest.approx(r.mean())
    assert out["f1_macro"] == pytest.approx(f.mean())
    assert out["precision_macro"] != pytest.approx(out["recall_macro"])  # the two are not interchangeable here
    assert list(out["per_class"]) == labels
    for i, lab in enumerate(labels):
        row = out["per_class"][lab]
        assert row == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
        assert isinstance(row["support"], int)
    assert out["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(k)).tolist()
    # FAR / FRR of class-vs-rest claims on the softmax probabilities at the default threshold 0.5
    positive = np.eye(k, dtype=bool)[y]
    far, frr = sk_far_frr(positive, probs >= 0.5)
    assert out["threshold"] == 0.5
    assert out["far"] == pytest.approx(far) and out["frr"] == pytest.approx(frr)
    assert far != pytest.approx(frr)  # a swap would show
    t, e_far, e_frr = brute_force_eer(positive, probs)
    assert out["eer_threshold"] == pytest.approx(t)
    assert out["eer"] == pytest.approx((e_far + e_frr) / 2)


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_multiclass_threshold_is_honoured(mc, threshold):
    y, logits, k = mc
    out = M.multiclass_metrics(y, logits, threshold=threshold)
    probs = scipy_softmax(logits, axis=1)
    far, frr = sk_far_frr(np.eye(k, dtype=bool)[y], probs >= threshold)
    assert out["threshold"] == threshold
    assert (out["far"], out["frr"]) == pytest.approx((far, frr))
    assert list(out["per_class"]) == [str(i) for i in range(k)]  # default labels: the class indices


def test_multiclass_on_known_predictions():
    # 4 samples, 3 classes; predictions by construction: 0 -> 0, 1 -> 2 (wrong), 2 -> 2, 0 -> 1 (wrong)
    y = np.array([0, 1, 2, 0])
    logits = np.full((4, 3), -10.0)
    logits[[0, 1, 2, 3], [0, 2, 2, 1]] = 10.0
    out = M.multiclass_metrics(y, logits, labels=["a", "b", "c"])
    assert out["top1"] == 0.5
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 0, 1], [0, 0, 1]]
    assert out["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert out["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    # each sample accepts exactly its predicted class (p ~ 1): 2 of 8 impostor claims accepted,
    # 2 of 4 genuine claims rejected
    assert out["far"] == pytest.approx(2 / 8) and out["frr"] == pytest.approx(2 / 4)


# ----------------------------------------------------------------------------- the multilabel summary

def test_multilabel_summary_against_sklearn(ml):
    y, logits, k = ml
    labels = list("vwxyz")
    out = M.multilabel_metrics(y, logits, labels=labels)
    probs = expit(logits)
    pred = (probs >= 0.5).astype(int)
    assert out["n"] == len(y)
    assert out["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert out["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert out["precision_micro"] == pytest.approx(skm.precision_score(y, pred, average="micro", zero_division=0))
    assert out["recall_micro"] == pytest.approx(skm.recall_score(y, pred, average="micro", zero_division=0))
    assert out["precision_micro"] != pytest.approx(out["recall_micro"])
    assert out["exact_match"] == pytest.approx(skm.accuracy_score(y, pred))
    ap = [skm.average_precision_score(y[:, j], probs[:, j]) for j in range(k - 1)]  # label z has no positive
    assert out["map"] == pytest.approx(np.mean(ap))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    assert list(out["per_label"]) == labels
    for j, lab in enumerate(labels):
        row = out["per_label"][lab]
        expected = {"precision": p[j], "recall": r[j], "f1": f[j], "support": s[j],
                    "ap": ap[j] if j < k - 1 else None}
        assert row == pytest.approx(expected)
        assert isinstance(row["support"], int)
    # FAR / FRR: every (sample, label) pair is one claim, accepted when sigmoid(logit) >= 0.5
    far, frr = sk_far_frr(y, pred)
    assert out["threshold"] == 0.5
    assert (out["far"], out["frr"]) == pytest.approx((far, frr))
    assert far != pytest.approx(frr)
    t, e_far, e_frr = brute_force_eer(y, probs)
    assert out["eer_threshold"] == pytest.approx(t)
    assert out["eer"] == pytest.approx((e_far + e_frr) / 2)


def test_multilabel_uses_sigmoid_not_softmax():
    # two labels both clearly present: sigmoid accepts both, a softmax over the row could accept one at most
    y = np.array([[1, 1, 0], [0, 1, 0]])
    logits = np.array([[3.0, 3.0, -3.0], [-3.0, 2.0, -1.0]])
    out = M.multilabel_metrics(y, logits)
    assert out["exact_match"] == 1.0 and out["f1_micro"] == 1.0
    assert out["f1_macro"] == pytest.approx(2 / 3)  # label 2: never true, never predicted -> F1 0 (zero_division=0)
    assert (out["far"], out["frr"]) == (0.0, 0.0)
    assert list(out["per_label"]) == ["0", "1", "2"]
    assert out["per_label"]["2"]["ap"] is None and out["per_label"]["0"]["ap"] == 1.0


@pytest.mark.parametrize("threshold", [0.2, 0.8])
def test_multilabel_threshold_is_honoured(ml, threshold):
    y, logits, k = ml
    out = M.multilabel_metrics(y, logits, threshold=threshold)
    pred = (expit(logits) >= threshold).astype(int)
    assert out["threshold"] == threshold
    assert out["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert out["exact_match"] == pytest.approx(skm.accuracy_score(y, pred))
    assert (out["far"], out["frr"]) == pytest.approx(sk_far_frr(y, pred))


# ----------------------------------------------------------------------------- building blocks

def test_far_frr_counts_and_the_boundary():
    positive = np.array([[1, 0], [0, 1], [1, 0]])
    scores = np.array([[0.5, 0.5], [0.2, 0.49], [0.9, 0.1]])
    r = M.far_frr(positive, scores, 0.5)  # a score equal to the threshold is accepted
    assert r == {"threshold": 0.5, "far": pytest.approx(1 / 3), "frr": pytest.approx(1 / 3),
                 "negatives": 3, "positives": 3}
    assert isinstance(r["negatives"], int) and isinstance(r["threshold"], float)
    assert M.far_frr([1, 1], [0.1, 0.9], 0.5) == {"threshold": 0.5, "far": 0.0, "frr": 0.5, "negatives": 0,
                                                  "positives": 2}
    assert M.far_frr([0, 0, 0], [0.1, 0.9, 0.7], 0.5) == {"threshold": 0.5, "far": pytest.approx(2 / 3),
                                                          "frr": 0.0, "negatives": 3, "positives": 0}


@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.95])
def test_far_frr_random_against_sklearn(threshold):
    rng = np.random.default_rng(7)
    positive = rng.random(500) < 0.3
    scores = np.clip(rng.normal(0.35 + 0.3 * positive, 0.2), 0, 1)
    r = M.far_frr(positive, scores, threshold)
    assert (r["far"], r["frr"]) == pytest.approx(sk_far_frr(positive, scores >= threshold))
    assert r["positives"] == positive.sum() and r["negatives"] == (~positive).sum()


def test_class_vs_rest_multiclass_and_multilabel_agree():
    y = np.array([2, 0, 1, 1])
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.5, 0.45, 0.05]])
    as_indices = M.class_vs_rest_far_frr(y, probs, 0.45)
    as_matrix = M.class_vs_rest_far_frr(np.eye(3, dtype=int)[y], probs, 0.45)
    assert as_indices == as_matrix
    far, frr = sk_far_frr(np.eye(3)[y], probs >= 0.45)
    assert (as_indices["far"], as_indices["frr"]) == pytest.approx((far, frr))
    assert as_indices["positives"] == 4 and as_indices["negatives"] == 8 and as_indices["threshold"] == 0.45
    assert M.class_vs_rest_far_frr(y, probs)["threshold"] == 0.5  # the default
    assert M.class_vs_rest_far_frr(y.astype(float), probs, 0.45) == as_indices  # indices stored as floats


def test_equal_error_threshold_against_sklearn_roc():
    rng = np.random.default_rng(11)
    positive = rng.random(400) < 0.4
    scores = rng.normal(positive * 1.2, 1.0)
    eq = M.equal_error_threshold(positive, scores)
    fpr, tpr, thr = skm.roc_curve(positive, scores, drop_intermediate=False)
    i = int(np.argmin(np.abs(fpr - (1 - tpr))))
    assert eq["threshold"] == pytest.approx(thr[i])
    assert eq["far"] == pytest.approx(fpr[i]) and eq["frr"] == pytest.approx(1 - tpr[i])
    assert eq["eer"] == pytest.approx((fpr[i] + 1 - tpr[i]) / 2)


def test_equal_error_threshold_small_cases():
    # separable: threshold at the lowest positive score, both rates 0
    assert M.equal_error_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == {
        "threshold": 0.8, "far": 0.0, "frr": 0.0, "eer": 0.0}
    # one positive scored below one negative: no threshold has equal rates; closest wins
    eq = M.equal_error_threshold([1, 0, 1, 0, 0], [0.9, 0.7, 0.4, 0.3, 0.1])
    assert eq == brute_force_eer_dict([1, 0, 1, 0, 0], [0.9, 0.7, 0.4, 0.3, 0.1])
    # without negatives (or positives) the empty rate counts as 0
    only_pos = M.equal_error_threshold([1, 1, 1], [0.2, 0.5, 0.9])
    assert only_pos == {"threshold": 0.2, "far": 0.0, "frr": 0.0, "eer": 0.0}
    only_neg = M.equal_error_threshold([0, 0], [0.2, 0.5])
    assert only_neg == {"threshold": 0.5, "far": 0.5, "frr": 0.0, "eer": 0.25}


def brute_force_eer_dict(positive, scores):
    t, far, frr = brute_force_eer(positive, scores)
    return {"threshold": pytest.approx(t), "far": pytest.approx(far), "frr": pytest.approx(frr),
            "eer": pytest.approx((far + frr) / 2)}


def test_topk_accuracy_ties_and_limits():
    scores = np.array([[0.5, 0.5, 0.0], [0.1, 0.3, 0.3]])
    # ties go to the lower index first: row 0's top-1 is class 0, row 1's is class 1
    assert M.topk_accuracy(np.array([0, 1]), scores, 1) == 1.0
    assert M.topk_accuracy(np.array([1, 2]), scores, 1) == 0.0
    assert M.topk_accuracy(np.array([1, 2]), scores, 2) == 1.0
    assert M.topk_accuracy(np.array([2, 0]), scores, 10) == 1.0  # k above the class count: everything
    assert M.topk_accuracy(np.array([2, 0]), scores) == 0.0  # default k = 1
    assert M.topk_accuracy(np.array([], dtype=int), np.zeros((0, 3)), 1) == 0.0


def test_precision_recall_f1_with_absent_classes():
    y = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0])
    out = M.precision_recall_f1(y, pred, 4)  # classes 2 and 3 neither true nor predicted
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    for key, ref in zip(("precision", "recall", "f1", "support"), (p, r, f, s)):
        np.testing.assert_allclose(out[key], ref)
    assert out["support"].dtype.kind == "i"


def test_confusion_matrix_counts_repeats():
    cm = M.confusion_matrix([1, 1, 1, 0], [2, 2, 1, 0], 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 2], [0, 0, 0]] and cm.dtype == np.int64


def test_multilabel_prf_against_sklearn_with_empty_labels():
    y = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]])
    pred = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]])  # label 2: predicted, never true
    out = M.multilabel_prf(y, pred)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    np.testing.assert_allclose(out["per_label"]["precision"], p)
    np.testing.assert_allclose(out["per_label"]["recall"], r)
    np.testing.assert_allclose(out["per_label"]["f1"], f)
    np.testing.assert_array_equal(out["per_label"]["support"], s)
    for avg in ("micro", "macro"):
        pm, rm, fm, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert out[avg] == pytest.approx({"precision": pm, "recall": rm, "f1": fm})
    none = M.multilabel_prf(np.zeros((2, 2)), np.zeros((2, 2)))  # nothing true, nothing predicted
    assert none["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_average_precision_with_ties_against_sklearn():
    rng = np.random.default_rng(3)
    for _ in range(5):
        y = rng.random(60) < 0.3
        y[0] = True
        scores = np.round(rng.normal(y * 1.0, 1.0), 1)  # many ties
        assert M.average_precision(y, scores) == pytest.approx(skm.average_precision_score(y, scores))
    # a tie between a positive and a negative at the top counts as one threshold (precision 1/2)
    assert M.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.average_precision([0, 1, 1], [0.5, 0.5, 0.1]) == pytest.approx(
        skm.average_precision_score([0, 1, 1], [0.5, 0.5, 0.1]))


def test_mean_average_precision_skips_labels_without_positives():
    y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.4, 0.8], [0.3, 0.6, 0.7], [0.8, 0.1, 0.2]])
    m_ap, ap = M.mean_average_precision(y, scores)
    ref0 = skm.average_precision_score(y[:, 0], scores[:, 0])
    ref2 = skm.average_precision_score(y[:, 2], scores[:, 2])
    assert ap[0] == pytest.approx(ref0) and np.isnan(ap[1]) and ap[2] == pytest.approx(ref2)
    assert m_ap == pytest.approx((ref0 + ref2) / 2)
    nothing, ap_none = M.mean_average_precision(np.zeros((3, 2)), np.ones((3, 2)))
    assert nothing == 0.0 and np.isnan(ap_none).all()


def test_exact_match():
    y = np.array([[1, 0], [1, 1], [0, 0]])
    assert M.exact_match(y, np.array([[1, 0], [1, 0], [0, 0]])) == pytest.approx(
        skm.accuracy_score(y, np.array([[1, 0], [1, 0], [0, 0]])))
    assert M.exact_match(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0


def test_softmax_and_sigmoid_against_scipy():
    z = np.array([[1000.0, 0.0, -1000.0], [0.5, 0.25, -2.0]])
    np.testing.assert_allclose(M.softmax(z), scipy_softmax(z, axis=1))
    assert np.isfinite(M.softmax(z)).all()
    np.testing.assert_allclose(M.softmax(z).sum(axis=1), 1.0)
    np.testing.assert_allclose(M.sigmoid(z[1]), expit(z[1]))
    assert M.sigmoid(np.array([0.0]))[0] == 0.5


# ----------------------------------------------------------------------------- inputs of other types

def test_quantized_scores_rank_like_their_values():
    """uint8 scores (a quantized model's outputs) rank like the same numbers as floats; negating
    them in their own type would wrap around (-200 is 56 in uint8)."""
    rng = np.random.default_rng(8)
    y = rng.random(80) < 0.4
    y[0] = True
    q = rng.integers(0, 256, 80).astype(np.uint8)
    q[np.flatnonzero(~y)[:5]] = 0  # the lowest score: -0 is 0 in uint8, which would rank these first
    assert (q == 0).sum() >= 5
    assert M.average_precision(y, q) == pytest.approx(skm.average_precision_score(y, q.astype(float)))
    assert M.equal_error_threshold(y, q) == M.equal_error_threshold(y, q.astype(float))


def test_class_indices_stored_as_floats():
    y = np.array([0, 1, 2, 1, 0, 2])
    pred = np.array([0, 2, 2, 1, 1, 2])
    assert M.confusion_matrix(y.astype(float), pred.astype(np.float32), 3).tolist() == \
        skm.confusion_matrix(y, pred).tolist()
    logits = np.eye(3)[pred] * 4.0
    assert M.multiclass_metrics(y.astype(np.float32), logits) == M.multiclass_metrics(y, logits)


def test_float32_logits_keep_the_ranking_of_very_negative_logits():
    """ONNX Runtime gives float32 logits; a float32 sigmoid of logits below about -88 is exactly 0,
    which would tie them and change the mAP. AP is a ranking metric: it must equal AP on the logits."""
    y = np.array([[1], [0], [0], [1], [0]])
    logits = np.array([[-100.0], [-110.0], [-120.0], [-90.0], [-130.0]], dtype=np.float32)
    ref = skm.average_precision_score(y[:, 0], logits[:, 0])
    assert ref == 1.0
    assert M.multilabel_metrics(y, logits)["map"] == pytest.approx(ref)
    assert M.sigmoid(logits).min() > 0


def test_equal_error_threshold_with_one_positive_and_one_negative():
    assert M.equal_error_threshold([1, 0], [0.2, 0.8]) == brute_force_eer_dict([1, 0], [0.2, 0.8])
    assert M.equal_error_threshold([0, 1, 1], [0.9, 0.5, 0.1]) == brute_force_eer_dict([0, 1, 1], [0.9, 0.5, 0.1])
    assert M.equal_error_threshold([1, 0, 0], [0.5, 0.9, 0.1]) == brute_force_eer_dict([1, 0, 0], [0.5, 0.9, 0.1])


def test_topk_ties_among_many_classes_go_to_the_lower_index():
    # 64 classes, scores in {0, 1, 2}: many ties; the true class is the first of the highest ones
    rng = np.random.default_rng(12)
    scores = rng.integers(0, 3, size=(50, 64)).astype(float)
    y = scores.argmax(1)  # numpy's argmax returns the first maximum
    assert M.topk_accuracy(y, scores, 1) == 1.0
    second = np.array([sorted(range(64), key=lambda j: (-row[j], j))[1] for row in scores])
    assert M.topk_accuracy(second, scores, 1) == 0.0 and M.topk_accuracy(second, scores, 2) == 1.0
    small = np.array([[0.5, 0.5, 0.0], [0.1, 0.3, 0.3]])
    assert M.topk_accuracy(np.array([1, 2]), small) == 0.0  # the default k is 1 (k = 2 would give 1.0)
