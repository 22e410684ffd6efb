"""Random-number streams that a block of code borrows and gives back."""
import torch


def forked_rng(*devices):
    """torch.random.fork_rng over the CPU stream and those of the CUDA devices among
    ``devices`` (torch.device objects; others are ignored): the caller's streams are as they
    were after the block, whatever it drew."""
    cuda = sorted({d for d in devices if d.type == "cuda"}, key=str)
    return torch.random.fork_rng(devices=cuda)
