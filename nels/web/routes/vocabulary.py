"""What the library can be searched for: GET /api/vocabulary (every class per model, with segment counts),
which the site's /vocabulary page (nels/web/static/vocabulary.js) draws."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from nels.web.state import AppState, app_state

router = APIRouter()


@router.get("/api/vocabulary", tags=["search"], summary="Every class the library's models know, with segment counts")
async def vocabulary(st: AppState = Depends(app_state)):
    """{"segments", "models": [{"model", "classes", "segments", "labels": [{"label", "name", "description",
    "segments"}]}]}: a segment counts for the class its model finds most probable; classes are listed most
    frequent first, those that label no segment included."""
    from nels.search.vocabulary import library_vocabulary

    return await asyncio.get_running_loop().run_in_executor(st.search_pool, library_vocabulary, st.lib)
