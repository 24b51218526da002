"""The latentseg series' package. For now it holds what the benchmark scripts share: their
command-line flags, run metadata, result writers and `--merge` (`latentseg.benchmarking`), and
the UNet baseline two of them train (`latentseg.baselines`). The notebooks keep importing the
two top-level modules, `latentseg_utils` and `latentseg_widgets`, the layout they teach from.
"""
