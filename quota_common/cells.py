"""Cells: one large region run as several, each with its own ledger (its own Redis or shard).

A cell is named `<region>.<cell>` (`eu.1`, `eu.blue`). To the center each cell is a region of its
own — its own accounts, grants, leases and incarnation — so nothing in the distribution model
changes; what ties the cells to their region is the name alone:

- a promotion allowed in `eu` may be spent in every cell of `eu` (or only in the cells it lists);
- an emergency freeze of `eu` covers every cell of `eu`;
- order services route each order to one cell by its user (`cell_for`), so a user's per-user limits
  live in one ledger and stay exact.

Why a dot: a region's name is a path segment of its agents' and order services' SPIFFE identities
(`spiffe://<domain>/region/<name>/agent`), whose characters are letters, digits, `.`, `-` and `_`.
`#` would end the URI, `/` would add a segment, and `-` is already in region names (`us-east`);
a dot keeps every identity, Redis ACL key pattern and metric label as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from quota_common.errors import InvalidArgument
from quota_common.validation import CELL_SEPARATOR as SEPARATOR
from quota_common.validation import quoted, require_region, require_unique


def region_of(name: str) -> str:
    """The region a cell belongs to (`eu` for `eu.1`); a region's own name for a region without cells."""
    return name.partition(SEPARATOR)[0]


def require_cells(field: str, cells: Sequence[str]) -> tuple[str, ...]:
    """The cells of one region: at least one, each `<region>.<cell>`, none twice, all of one region."""
    if not cells:
        raise InvalidArgument(f"{field} is empty; list the region's cells (eu.1, eu.2, ...)")
    for cell in cells:
        require_region(field, cell)
        if SEPARATOR not in cell:
            raise InvalidArgument(f"{field} {quoted(cell)} is a region, not a cell: name it <region>.<cell>")
    require_unique(field, cells)
    regions = sorted({region_of(cell) for cell in cells})
    if len(regions) > 1:
        raise InvalidArgument(f"{field} mixes the cells of regions {', '.join(regions)}; a client serves one region")
    return tuple(cells)


def cell_for(user_id: str, cells: Sequence[str]) -> str:
    """The cell that serves `user_id`'s orders: the highest of a hash of (cell, user) over the cells
    (rendezvous hashing). It depends on the set of cells, not their order; adding a cell moves only the
    users it wins (1/n of them), and removing one moves only its own users."""

    def weight(cell: str) -> bytes:
        return hashlib.blake2b(f"{cell}\0{user_id}".encode(), digest_size=8).digest()

    return max(cells, key=weight)
