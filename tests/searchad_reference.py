"""SearchAD's metric functions, copied unchanged (docstrings shortened) from their devkit as the reference our metric
code is checked against (``tests/test_eval_metrics.py``): ``searchad/utils/metrics.py`` and the label loop of
``searchad/evaluate.py`` of https://github.com/iis-esslingen/searchad_devkit at commit
512fcf323621e5e57aef13add07981fa1216c4e7 (2026-04-30).

MIT License, Copyright (c) 2026 Institute for Intelligent Systems. Permission is hereby granted, free of charge, to any
person obtaining a copy of this software and associated documentation files (the "Software"), to deal in the Software
without restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so,
subject to the following conditions: The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY,
WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR
OTHER DEALINGS IN THE SOFTWARE.
"""
import torch


def mean_average_precision(sorted_target: torch.Tensor, top_k: int = 100) -> torch.Tensor:
    """MAP of one ranking (1 = relevant), as in the devkit."""
    num_relevant_positives = torch.sum(sorted_target).int()
    if num_relevant_positives == 0:
        return torch.tensor(0.0)

    effective_len = min(top_k, len(sorted_target))
    truncated_target = sorted_target[:effective_len]

    cumulative_relevant_count = torch.cumsum(truncated_target, dim=0)
    denominators = torch.arange(1, effective_len + 1, device=truncated_target.device, dtype=torch.float32)
    precision_at_k = cumulative_relevant_count / denominators

    relevant_indices_in_truncated = torch.nonzero(truncated_target).squeeze(-1)

    # Sum precision_at_k only at those relevant positions
    acc_avg_precision = torch.sum(precision_at_k[relevant_indices_in_truncated])

    return acc_avg_precision / num_relevant_positives


def mean_rprecision(sorted_target: torch.Tensor) -> torch.Tensor:
    """R-Precision of one ranking, as in the devkit."""
    num_relevant = torch.sum(sorted_target).int()
    if num_relevant == 0:
        return torch.tensor(0.0)
    r = torch.sum(sorted_target[:num_relevant])
    return r / num_relevant


def precision_at_k(sorted_target: torch.Tensor, k: int) -> torch.Tensor:
    """P@k of one ranking, as in the devkit."""
    effective_k = min(k, len(sorted_target))
    if effective_k == 0:
        return torch.tensor(0.0)
    relevant_in_top_k = torch.sum(sorted_target[:effective_k])
    return relevant_in_top_k / effective_k


def evaluate_label(imagepaths: list[str], gt: set[str], ignore: set[str]) -> dict[str, float]:
    """The per-label part of the devkit's ``_evaluate_labels``: ignored images dropped from the ranking, then MAP
    over the whole remaining list, R-Precision, P@5/25/100 (NaN when nothing is left)."""
    filtered = [p for p in imagepaths if p not in ignore]
    index = {p: i for i, p in enumerate(filtered)}
    n = len(filtered)
    if n == 0:
        return {"MAP": float("nan"), "R-Precision": float("nan"), "P@5": float("nan")}
    targets = torch.zeros(n)
    for p in gt:
        if p in index:
            targets[index[p]] = 1.0
    return {"MAP": mean_average_precision(targets, n).item(), "R-Precision": mean_rprecision(targets).item(),
            **{f"P@{k}": precision_at_k(targets, k).item() for k in (5, 25, 100)}}


def image_level_annotations(annotation_dict: dict, min_box_area: int = 50,
                            ignore_size_labels: tuple = ()) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The devkit's ``load_annotations_and_filter_size`` (``prepare_image_level_annotations.py``) on an already loaded
    annotation dict, its print left out: (image-level annotations per label, ignored images per label)."""
    from collections import defaultdict

    annotations_wo_bbox = defaultdict(list)
    ignore_images = defaultdict(list)
    for image_path, annotations in annotation_dict.items():
        classes_with_at_least_one_valid_object = []
        count_valid_objects = defaultdict(int)
        for annotation in annotations:
            label = annotation["label"]
            if label not in ignore_images.keys():
                ignore_images[label] = []
            if label not in count_valid_objects.keys():
                count_valid_objects[label] = 0

        for annotation in annotations:
            label = annotation["label"]
            box_list = annotation["bbox"]
            bbox_area = (box_list[2] - box_list[0]) * (box_list[3] - box_list[1])

            if bbox_area >= min_box_area or label in ignore_size_labels:
                count_valid_objects[label] += 1

                if label not in classes_with_at_least_one_valid_object:
                    annotation_wo_bbox = {"image": image_path, "label": label}
                    annotations_wo_bbox[label].append(annotation_wo_bbox)
                    classes_with_at_least_one_valid_object.append(label)

        for label, count in count_valid_objects.items():
            if count == 0:
                if image_path not in ignore_images[label]:
                    ignore_images[label].append(image_path)
    return ({lb: [a["image"] for a in anns] for lb, anns in annotations_wo_bbox.items()}, dict(ignore_images))
