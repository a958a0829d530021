"""Fixed few-shot data for the fitted methods' tests (APE, APE-T, GDA): the ``FitData`` a method's ``fit`` reads."""

from __future__ import annotations


class FixedFitData:
    """Fixed augmented views ``[V, N, E]`` of the few-shot set (labels ``[N]``) and validation features."""

    def __init__(self, views, labels, val, val_labels):
        self.views, self.labels, self.val, self.val_labels = views, labels, val, val_labels
        self.logged: list[str] = []

    def augmented_features(self, views, crop_scale=(0.5, 1.0)):
        assert views == self.views.shape[0] and tuple(crop_scale) == (0.5, 1.0)
        return self.views, self.labels

    def features(self, split):
        assert split == "val"
        return self.val, self.val_labels

    def log(self, message):
        self.logged.append(message)
