"""Criteo-Kaggle shape constants and random inputs shared by the reference models.

The realistic presets use the 13 dense / 26 categorical layout of the Criteo Kaggle display-ads
data. Its raw cardinalities reach 10M rows, so the presets hash every feature into at most
`DEFAULT_ROW_CAP` rows (what DLRM's `--max-ind-range` does), which keeps a D=16 model near 60 MB.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NUM_DENSE = 13
CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
DEFAULT_ROW_CAP = 100_000


def capped_table_sizes(row_cap: int = DEFAULT_ROW_CAP) -> tuple[int, ...]:
    """Criteo-Kaggle table sizes hashed into at most `row_cap` rows each.

    Example:
        >>> len(capped_table_sizes()), max(capped_table_sizes(1000))
        (26, 1000)
    """
    return tuple(min(rows, row_cap) for rows in CARDINALITIES)


def random_inputs(
    num_dense: int,
    table_sizes: Sequence[int],
    batch_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (dense, sparse) inputs with every id inside its table.

    Returns:
        dense: (B, num_dense) float32, log-count-like values >= 0.
        sparse: (B, F) int64 with `sparse[:, f] < table_sizes[f]`.
    """
    generator = torch.Generator().manual_seed(seed)
    dense = torch.log1p(torch.rand(batch_size, num_dense, generator=generator) * 100.0)
    columns = [torch.randint(0, rows, (batch_size,), generator=generator) for rows in table_sizes]
    sparse = torch.stack(columns, dim=1)
    return dense.to(device), sparse.to(device)


def parameter_device(module: torch.nn.Module) -> torch.device:
    """Device of the module's first parameter (CPU for a parameter-free module)."""
    first = next(module.parameters(), None)
    return torch.device("cpu") if first is None else first.device
