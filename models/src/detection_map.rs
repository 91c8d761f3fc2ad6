//! Mean average precision of detections against labelled boxes, VOC style.
//!
//! Per class, every image's detections of that class are ranked by score (descending,
//! ties in the order given); each is matched to the not-yet-matched ground-truth box of
//! its image and class with the highest IoU, a true positive when that IoU is at least
//! the threshold, else a false positive. AP is the all-point interpolated area under the
//! precision/recall curve (VOC 2010+: the precision envelope, summed where recall
//! changes); mAP averages it over the classes that have ground truth. `mAP@0.5:0.95`
//! is the mean of mAP over IoU 0.50, 0.55, ..., 0.95. This is the definition
//! `python/train_femtodet.py` (`voc_map`) reports, so the two agree on the same
//! detections.

use crate::net::Detection;

/// One image's ground truth: corner boxes `[x0, y0, x1, y1]` and their class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroundTruth {
    /// Boxes and labels.
    pub objects: Vec<([f32; 4], u32)>,
}

/// IoU of two corner boxes (no +1 pixel), in f64.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let (a, b) = (a.map(f64::from), b.map(f64::from));
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let union = area(&a) + area(&b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// VOC all-point interpolated AP of a precision/recall curve (recall ascending).
pub fn voc_ap(recall: &[f64], precision: &[f64]) -> f64 {
    let mut mrec = Vec::with_capacity(recall.len() + 2);
    mrec.push(0.0);
    mrec.extend_from_slice(recall);
    mrec.push(1.0);
    let mut mpre = Vec::with_capacity(precision.len() + 2);
    mpre.push(0.0);
    mpre.extend_from_slice(precision);
    mpre.push(0.0);
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    (0..mrec.len() - 1)
        .filter(|&i| mrec[i + 1] != mrec[i])
        .map(|i| (mrec[i + 1] - mrec[i]) * mpre[i + 1])
        .sum()
}

/// AP of class `class` at IoU `threshold`; `None` when the class has no ground truth.
pub fn class_ap(
    detections: &[Vec<Detection>],
    truth: &[GroundTruth],
    class: u32,
    threshold: f64,
) -> Option<f64> {
    let positives: usize = truth
        .iter()
        .map(|g| g.objects.iter().filter(|(_, l)| *l == class).count())
        .sum();
    if positives == 0 {
        return None;
    }
    let mut ranked: Vec<(f32, usize, [f32; 4])> = detections
        .iter()
        .enumerate()
        .flat_map(|(i, dets)| {
            dets.iter()
                .filter(|d| d.label == class)
                .map(move |d| (d.score, i, d.bbox))
        })
        .collect();
    // Stable: equal scores keep their order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut used: Vec<Vec<bool>> = truth.iter().map(|g| vec![false; g.objects.len()]).collect();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut recall = Vec::with_capacity(ranked.len());
    let mut precision = Vec::with_capacity(ranked.len());
    for (_, image, bbox) in ranked {
        let best = truth.get(image).and_then(|g| {
            g.objects
                .iter()
                .enumerate()
                .filter(|(j, (_, l))| *l == class && !used[image][*j])
                .map(|(j, (b, _))| (j, iou(&bbox, b)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
        });
        match best {
            Some((j, v)) if v >= threshold => {
                used[image][j] = true;
                tp += 1;
            }
            _ => fp += 1,
        }
        recall.push(tp as f64 / positives as f64);
        precision.push(tp as f64 / ((tp + fp) as f64).max(f64::EPSILON));
    }
    Some(voc_ap(&recall, &precision))
}

/// mAP at IoU `threshold` over `classes` classes (those with ground truth); 0 when
/// none has any.
pub fn mean_ap(
    detections: &[Vec<Detection>],
    truth: &[GroundTruth],
    classes: u32,
    threshold: f64,
) -> f64 {
    let aps: Vec<f64> = (0..classes)
        .filter_map(|c| class_ap(detections, truth, c, threshold))
        .collect();
    if aps.is_empty() {
        0.0
    } else {
        aps.iter().sum::<f64>() / aps.len() as f64
    }
}

/// `(mAP@0.5, mAP@0.5:0.95)`.
pub fn map_50_and_50_95(
    detections: &[Vec<Detection>],
    truth: &[GroundTruth],
    classes: u32,
) -> (f64, f64) {
    let at = |t: f64| mean_ap(detections, truth, classes, t);
    let range: f64 = (0..10).map(|k| at(0.5 + 0.05 * k as f64)).sum::<f64>() / 10.0;
    (at(0.5), range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4], score: f32, label: u32) -> Detection {
        Detection { bbox, score, label }
    }

    #[test]
    fn perfect_detections_score_one_and_misses_lower_recall() {
        let truth = vec![GroundTruth {
            objects: vec![([0.0, 0.0, 10.0, 10.0], 0), ([20.0, 20.0, 30.0, 30.0], 1)],
        }];
        let all = vec![vec![
            det([0.0, 0.0, 10.0, 10.0], 0.9, 0),
            det([20.0, 20.0, 30.0, 30.0], 0.8, 1),
        ]];
        assert_eq!(map_50_and_50_95(&all, &truth, 2), (1.0, 1.0));
        // Class 1 missed: its AP is 0, the mean 0.5. A class without ground truth
        // (class 2) does not count.
        let half = vec![vec![det([0.0, 0.0, 10.0, 10.0], 0.9, 0)]];
        assert_eq!(mean_ap(&half, &truth, 3, 0.5), 0.5);
        assert_eq!(class_ap(&half, &truth, 2, 0.5), None);
    }

    #[test]
    fn ranking_and_duplicates_follow_voc() {
        // Two ground-truth boxes; detections: FP (0.9), TP (0.8), duplicate of the
        // same box (0.7, FP), TP (0.6). Recall 0, .5, .5, 1; precision 0, .5, 1/3, .5.
        // Envelope: .5 up to recall 1 -> AP = 0.5 * 0.5 + 0.5 * 0.5 = 0.5.
        let truth = vec![GroundTruth {
            objects: vec![([0.0, 0.0, 10.0, 10.0], 0), ([50.0, 50.0, 60.0, 60.0], 0)],
        }];
        let dets = vec![vec![
            det([100.0, 100.0, 110.0, 110.0], 0.9, 0),
            det([0.0, 0.0, 10.0, 10.0], 0.8, 0),
            det([0.0, 0.0, 10.0, 10.0], 0.7, 0),
            det([50.0, 50.0, 60.0, 60.0], 0.6, 0),
        ]];
        let ap = class_ap(&dets, &truth, 0, 0.5).unwrap();
        assert!((ap - 0.5).abs() < 1e-12, "{ap}");
        assert!((voc_ap(&[0.5, 1.0], &[1.0, 0.5]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn the_iou_threshold_decides_and_the_range_averages() {
        // IoU of the detection with its box: 8x10 / 10x10 = 0.8.
        let truth = vec![GroundTruth {
            objects: vec![([0.0, 0.0, 10.0, 10.0], 0)],
        }];
        let dets = vec![vec![det([0.0, 0.0, 8.0, 10.0], 0.5, 0)]];
        assert_eq!(mean_ap(&dets, &truth, 1, 0.8), 1.0);
        assert_eq!(mean_ap(&dets, &truth, 1, 0.85), 0.0);
        // Thresholds .5 .. .8 (7 of 10) pass.
        let (at50, range) = map_50_and_50_95(&dets, &truth, 1);
        assert_eq!(at50, 1.0);
        assert!((range - 0.7).abs() < 1e-12, "{range}");
        // Detections in an image without truth of that class are false positives.
        let stray = vec![vec![det([0.0, 0.0, 10.0, 10.0], 0.5, 0)], vec![]];
        let truth2 = vec![GroundTruth::default(), truth[0].clone()];
        assert_eq!(mean_ap(&stray, &truth2, 1, 0.5), 0.0);
    }
}
