"""Accelerator attention kernels (Pallas) behind the decoder's plain XLA attention."""
