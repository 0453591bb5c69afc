"""What the DDP comparisons share: torch.distributed over Gloo, started under
mpirun (torchrun is broken in Debian's python3-torch), Open MPI's rank
variables becoming torch.distributed's, 1 intra-op thread per rank."""
import os

import torch
import torch.distributed as dist


def init_gloo_from_mpi(port):
    """Returns (rank, world size)."""
    os.environ.setdefault("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    os.environ.setdefault("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()
