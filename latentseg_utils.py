"""latentseg_utils: the notebooks' module, one name for everything the series builds.

The code lives in the package `latentseg/`, one file per topic; this module re-exports its
public names in the order the series teaches them, so a notebook writes `u.LatentSegNet`:

1. The tutorial's model, faithfully     latentseg/tutorial.py   (SimpleEncoder, LatentAttention,
                                                                 ExpertSegmentation, SegmentationModel)
2. The series' model and its parts       latentseg/blocks.py     (fourier_positions, AttentionBlock)
                                         latentseg/model.py      (LatentSegNet, the final model)
                                         latentseg/ablation.py   (LatentSegNetAblation, ABLATION_STEPS)
                                         latentseg/baselines.py  (PixelClassifier, SmallUNet)
3. Data                                  latentseg/data.py       (make_shapes_batch, make_split, ...)
4. Metrics                               latentseg/metrics.py    (confusion_matrix, mean_iou, ...)
5. Training and checkpoints              latentseg/training.py   (train, evaluate, load_checkpoint)
   Evidence over seeds                   latentseg/experiments.py (run_seeds, is_finding, ...)
6. Plotting                              latentseg/plotting.py   (plot_samples, plot_history, ...)
7. Latents that become segments          latentseg/mask_head.py  (MaskLatentSegNet, its loss)
                                         latentseg/panoptic.py   (predict_instances, panoptic_quality)
Input checks shared by all of them       latentseg/checks.py     (check_heads, check_images, ...)

Shapes are written as [B, C, H, W] for images, [B, H, W] for label maps and
[B, N, D] for token sequences (N = number of tokens, D = their width).
No global state: every random draw takes an explicit seed or torch.Generator.
"""
from __future__ import annotations

from latentseg.checks import check_heads, check_images, check_labels, check_positive
from latentseg.tutorial import (count_parameters, SimpleEncoder, LatentAttention,
                                ExpertSegmentation, SegmentationModel)
from latentseg.blocks import fourier_positions, AttentionBlock, conv_bn_relu
from latentseg.model import LatentSegNet
from latentseg.ablation import AblationOptions, LatentSegNetAblation, ABLATION_STEPS, ablation_rows
from latentseg.baselines import PixelClassifier, SmallUNet
from latentseg.data import (CLASS_NAMES, KEY_COLORS, as_generator, make_noise_batch,
                            make_shapes_batch, HELDOUT_SEED, VALIDATION_SEED, DATA_VARIANTS,
                            LONG_RANGE_VARIANTS, variant_data, make_split, make_heldout_set,
                            DISTANCE_EDGES, cue_distance)
from latentseg.metrics import (confusion_matrix, per_class_iou, mean_iou, pixel_accuracy,
                               mutual_information, entropy, specialisation)
from latentseg.training import (get_device, predict, evaluate, train, CHECKPOINT_DIR_VARIABLE,
                                checkpoint_path, save_checkpoint, load_checkpoint)
from latentseg.experiments import (seed_summary, is_finding, seed_table, run_seeds,
                                   accuracy_by_distance, distance_measure)
from latentseg.plotting import (CLASS_COLORS, class_colormap, class_legend, show_image,
                                show_labels, plot_samples, plot_predictions, plot_history,
                                plot_seed_strip, plot_accuracy_by_distance, plot_attention)
from latentseg.mask_head import (MaskLatentSegNet, semantic_scores, segments_of, match_segments,
                                 mask_classification_loss, discriminative_loss)
from latentseg.panoptic import (predict_instances, panoptic_inference,
                                connected_component_instances, MATCH_IOU, panoptic_quality,
                                mask_owner, claims, CLAIM_OUTCOMES, SPLIT_SHARE,
                                claim_outcomes, mask_head_scores)

__all__ = [
    # 1. the tutorial's model
    "count_parameters", "SimpleEncoder", "LatentAttention", "ExpertSegmentation",
    "SegmentationModel",
    # 2. the series' model, its parts, its ablation and the baselines
    "fourier_positions", "AttentionBlock", "conv_bn_relu", "LatentSegNet", "AblationOptions",
    "LatentSegNetAblation", "ABLATION_STEPS", "ablation_rows", "PixelClassifier", "SmallUNet",
    # 3. data
    "CLASS_NAMES", "KEY_COLORS", "as_generator", "make_noise_batch", "make_shapes_batch",
    "HELDOUT_SEED", "VALIDATION_SEED", "DATA_VARIANTS", "LONG_RANGE_VARIANTS", "variant_data",
    "make_split", "make_heldout_set", "DISTANCE_EDGES", "cue_distance",
    # 4. metrics
    "confusion_matrix", "per_class_iou", "mean_iou", "pixel_accuracy", "mutual_information",
    "entropy", "specialisation",
    # 5. training, checkpoints, evidence over seeds
    "get_device", "predict", "evaluate", "train", "CHECKPOINT_DIR_VARIABLE", "checkpoint_path",
    "save_checkpoint", "load_checkpoint", "seed_summary", "is_finding", "seed_table",
    "run_seeds", "accuracy_by_distance", "distance_measure",
    # 6. plotting
    "CLASS_COLORS", "class_colormap", "class_legend", "show_image", "show_labels",
    "plot_samples", "plot_predictions", "plot_history", "plot_seed_strip",
    "plot_accuracy_by_distance", "plot_attention",
    # 7. latents that become segments
    "MaskLatentSegNet", "semantic_scores", "segments_of", "match_segments",
    "mask_classification_loss", "discriminative_loss", "predict_instances", "panoptic_inference",
    "connected_component_instances",
    "MATCH_IOU", "panoptic_quality", "mask_owner", "claims", "CLAIM_OUTCOMES", "SPLIT_SHARE",
    "claim_outcomes", "mask_head_scores",
    # the input checks
    "check_heads", "check_positive", "check_images", "check_labels",
]
