"""Training techniques: the fp32 baseline loop, mixed precision (AMP) and gradient accumulation."""
