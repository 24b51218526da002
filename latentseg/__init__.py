"""The latentseg series' package, one file per topic (the notebooks import it through
`latentseg_utils`, which re-exports every public name in teaching order):

    checks.py       the input checks every model and script shares (check_heads, ...)
    tutorial.py     the tutorial's model, faithfully (notebooks 01-03)
    blocks.py       fourier_positions, AttentionBlock, conv_bn_relu
    model.py        LatentSegNet, the series' final model written out (notebook 05)
    ablation.py     AblationOptions, LatentSegNetAblation, ABLATION_STEPS, ablation_rows
    baselines.py    PixelClassifier (notebook 04) and SmallUNet (the benchmarks)
    data.py         the synthetic data, its variants and fixed splits
    metrics.py      IoU, accuracy, and the experts' specialisation
    training.py     train, evaluate, predict, checkpoints
    experiments.py  run_seeds and the series' rule for a finding; distance measures
    plotting.py     the figures
    mask_head.py    MaskLatentSegNet and its loss (notebook 08)
    panoptic.py     from its outputs to segments, and panoptic quality (notebook 08)
    benchmarking.py what the benchmark scripts share: flags, run metadata, result writers
"""
