"""Distributed data-parallel training: DDP (gloo on CPU, NCCL on GPU) launched by torchrun or
`torch.multiprocessing.spawn`, DeepSpeed ZeRO stages 0-3 (+ CPU offload) driven by a
ds_config JSON, and torch-native sharding (ZeroRedundancyOptimizer, FSDP2 `fully_shard`)."""
