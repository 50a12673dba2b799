"""Classification metrics in plain numpy (checked against scikit-learn in tests/test_metrics.py).

Conventions: ``y_true`` holds class indices (multiclass, shape (N,)) or a 0/1 matrix (multilabel,
shape (N, K)); ``scores`` is (N, K): probabilities (softmax / sigmoid) or logits where only the
ranking matters. A ratio with an empty denominator (no predicted / no true items) counts as 0,
like scikit-learn's ``zero_division=0``. All rates are fractions in [0, 1].
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


# ----------------------------------------------------------------------------- multiclass

def topk_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores (ties: lower index first)."""
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if len(y_true) == 0:
        return 0.0
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (arrays of length K) from class predictions."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, predicted + support)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


# ----------------------------------------------------------------------------- multilabel

def multilabel_prf(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Per-label precision/recall/F1/support of 0/1 matrices, plus micro and macro F1.

    Micro pools the true/false positives of every label; macro is the unweighted mean over labels."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    tp = (y_true & y_pred).sum(axis=0)
    predicted = y_pred.sum(axis=0)
    support = y_true.sum(axis=0)
    per_label = {"precision": _safe_div(tp, predicted), "recall": _safe_div(tp, support),
                 "f1": _safe_div(2 * tp, predicted + support), "support": support}
    micro = {"precision": float(_safe_div(tp.sum(), predicted.sum())),
             "recall": float(_safe_div(tp.sum(), support.sum())),
             "f1": float(_safe_div(2 * tp.sum(), predicted.sum() + support.sum()))}
    return {"per_label": per_label, "micro": micro,
            "macro": {k: float(per_label[k].mean()) for k in ("precision", "recall", "f1")}}


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one binary ranking: sum over thresholds of (R_n - R_{n-1}) * P_n,
    with tied scores treated as one threshold (scikit-learn's definition, no interpolation).
    Returns 0.0 when there is no positive."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = y_true.sum()
    if n_pos == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y_true[order]
    tp = np.cumsum(t)
    # the last index of each group of equal scores is where that threshold's counts are read
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp_at = tp[last].astype(np.float64)
    precision = tp_at / (last + 1)
    recall = tp_at / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """(mAP over labels that have at least one positive, per-label AP with NaN for the others)."""
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    ap = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        if y_true[:, k].any():
            ap[k] = average_precision(y_true[:, k], scores[:, k])
    valid = ap[~np.isnan(ap)]
    return (float(valid.mean()) if len(valid) else 0.0), ap


def exact_match(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose whole predicted label set equals the true one (subset accuracy)."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    return float(np.mean(np.all(y_true == y_pred, axis=1))) if len(y_true) else 0.0


# ----------------------------------------------------------------------------- FAR / FRR

def far_frr(positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """False acceptance and false rejection rates of the decision "accept when score >= threshold".

    ``positive`` and ``scores`` are matched arrays of any shape (flattened). A *positive* is a
    claim that is true (genuine), a *negative* one that is false (impostor):

        FAR = accepted negatives / negatives      (false acceptance rate, = false positive rate)
        FRR = rejected positives / positives      (false rejection rate,  = 1 - true positive rate)

    For a classifier, :func:`class_vs_rest_far_frr` builds the claims. A rate whose denominator is
    empty is 0. The threshold used is returned with the rates."""
    positive = np.asarray(positive).astype(bool).ravel()
    accepted = np.asarray(scores, dtype=np.float64).ravel() >= threshold
    negatives = (~positive).sum()
    positives = positive.sum()
    return {"threshold": float(threshold),
            "far": float(_safe_div((accepted & ~positive).sum(), negatives)),
            "frr": float(_safe_div((~accepted & positive).sum(), positives)),
            "negatives": int(negatives), "positives": int(positives)}


def class_vs_rest_far_frr(y_true: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """FAR/FRR of class-vs-rest acceptance on per-class probabilities.

    Every (sample, class) pair is one claim "this sample is that class", accepted when the class's
    probability (softmax for multiclass, sigmoid for multilabel) is >= ``threshold``. Positive
    pairs are the sample's true class(es), the others negatives. For multiclass with a threshold
    above 0.5, at most one class per sample can be accepted, which makes this the open-set
    "reject unless confident" rule: FRR counts true classes left unaccepted (rejected or
    mistaken), FAR counts wrong classes accepted.

    ``y_true``: class indices (N,) or a 0/1 matrix (N, K)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if y_true.ndim == 1:
        positive = np.zeros(probs.shape, dtype=bool)
        positive[np.arange(len(y_true)), y_true.astype(np.int64)] = True
    else:
        positive = y_true.astype(bool)
    return far_frr(positive, probs, threshold)


def equal_error_threshold(positive: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The candidate threshold (one of the scores) where FAR and FRR are closest; their mean is the EER."""
    positive = np.asarray(positive).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.sort(scores[positive])
    neg = np.sort(scores[~positive])
    cands = np.unique(scores)
    # accept when score >= t: rejected positives are those < t, accepted negatives those >= t
    frr = np.searchsorted(pos, cands, side="left") / max(len(pos), 1)
    far = (len(neg) - np.searchsorted(neg, cands, side="left")) / max(len(neg), 1)
    i = int(np.argmin(np.abs(far - frr)))
    return {"threshold": float(cands[i]), "far": float(far[i]), "frr": float(frr[i]),
            "eer": float((far[i] + frr[i]) / 2)}


# ----------------------------------------------------------------------------- summaries

def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def multiclass_metrics(y_true: np.ndarray, logits: np.ndarray, labels: Sequence[str] | None = None,
                       threshold: float = 0.5) -> dict[str, Any]:
    """Everything for a multiclass evaluation from (N,) class indices and (N, K) logits:
    top1, top5, macro precision/recall/F1, per-class table, confusion matrix, FAR/FRR at
    ``threshold`` (class-vs-rest on softmax probabilities) and the equal-error point."""
    y_true = np.asarray(y_true, dtype=np.int64)
    logits = np.asarray(logits)
    k = logits.shape[1]
    labels = list(labels) if labels is not None else [str(i) for i in range(k)]
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    prf = precision_recall_f1(y_true, pred, k)
    positive = np.zeros(probs.shape, dtype=bool)
    positive[np.arange(len(y_true)), y_true] = True
    out = {"n": int(len(y_true)), "top1": topk_accuracy(y_true, probs, 1),
           "top5": topk_accuracy(y_true, probs, 5),
           "precision_macro": float(prf["precision"].mean()), "recall_macro": float(prf["recall"].mean()),
           "f1_macro": float(prf["f1"].mean())}
    fr = far_frr(positive, probs, threshold)
    out.update(threshold=fr["threshold"], far=fr["far"], frr=fr["frr"])
    eq = equal_error_threshold(positive, probs)
    out.update(eer=eq["eer"], eer_threshold=eq["threshold"])
    out["per_class"] = {lab: {"precision": float(prf["precision"][i]), "recall": float(prf["recall"][i]),
                              "f1": float(prf["f1"][i]), "support": int(prf["support"][i])}
                        for i, lab in enumerate(labels)}
    out["confusion_matrix"] = confusion_matrix(y_true, pred, k).tolist()
    return out


def multilabel_metrics(y_true: np.ndarray, logits: np.ndarray, labels: Sequence[str] | None = None,
                       threshold: float = 0.5) -> dict[str, Any]:
    """Everything for a multilabel evaluation from a (N, K) 0/1 matrix and (N, K) logits: a label
    is predicted when its sigmoid probability is >= ``threshold``. micro/macro F1, mAP,
    exact match, per-label table, FAR/FRR (per (sample, label) pair) and the equal-error point."""
    y_true = np.asarray(y_true).astype(bool)
    probs = sigmoid(logits)
    pred = probs >= threshold
    k = probs.shape[1]
    labels = list(labels) if labels is not None else [str(i) for i in range(k)]
    prf = multilabel_prf(y_true, pred)
    m_ap, ap = mean_average_precision(y_true, probs)
    out = {"n": int(len(y_true)), "f1_micro": prf["micro"]["f1"], "f1_macro": prf["macro"]["f1"],
           "precision_micro": prf["micro"]["precision"], "recall_micro": prf["micro"]["recall"],
           "map": m_ap, "exact_match": exact_match(y_true, pred)}
    fr = far_frr(y_true, probs, threshold)
    out.update(threshold=fr["threshold"], far=fr["far"], frr=fr["frr"])
    eq = equal_error_threshold(y_true, probs)
    out.update(eer=eq["eer"], eer_threshold=eq["threshold"])
    pl = prf["per_label"]
    out["per_label"] = {lab: {"precision": float(pl["precision"][i]), "recall": float(pl["recall"][i]),
                              "f1": float(pl["f1"][i]), "support": int(pl["support"][i]),
                              "ap": None if np.isnan(ap[i]) else float(ap[i])}
                        for i, lab in enumerate(labels)}
    return out
