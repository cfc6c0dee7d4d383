"""Facts about the reference tool (the DRP-AI Quantizer 1.0.1) that several tests check
drpaiq against."""

from __future__ import annotations

#: The reference tool's command-line flags (its command-line table): ``drpaiq quantize``
#: accepts each, and each has a row in the migration guide.
REFERENCE_FLAGS = (
    "--input_model_path",
    "--output_model_path",
    "--calibrate_dataset",
    "--calibrate_method",
    "-cm",
    "--datareader_path",
    "--operate_to_exclude",
    "-ex",
    "--node_to_exclude",
    "-exn",
    "--norm_mean",
    "--norm_std",
    "--skip_preprocess",
    "--preprocess_mode",
    "-ppm",
    "--preprocessed_model_output",
    "-pmo",
    "--tvm",
)
