"""Running a real Triton Inference Server locally (from the nvidia-pytriton wheel) and writing the
model repositories it serves."""
