"""Path and query parameter types shared by the routes.

Ids are bounded to what the store's integer keys can hold (PostgreSQL ``integer``: 2^31 - 1), so
an out-of-range id is a 422 naming the bound instead of an overflow inside the database driver.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_ID = 2**31 - 1

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
OptionalIdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
