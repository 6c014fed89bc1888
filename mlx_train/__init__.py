"""MLX training for small LLaMA-style chat models: pretrain, SFT, DPO and R1 stages that write
TensorBoard logs, checkpoints in mlx-lm's layout, a local BPE tokenizer and offline data.

Command lines: ``python -m mlx_train.data`` (bundled data), ``python -m mlx_train.train``
(a training stage), ``python -m mlx_train.infer`` (generation from a checkpoint),
``python -m mlx_train.distill`` (SFT data from a teacher model; the ``distill`` package).
"""
