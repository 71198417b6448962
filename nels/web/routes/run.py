"""The unattended loop on the site: the /run page (run.js), its status (`nels status` as JSON), the per-class AP of
every model version as a chart, and accepting a logged query as a new class. Admin only, like /admin."""
from __future__ import annotations

import io

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, Field

from nels.web.auth import require_admin
from nels.web.errors import ApiError
from nels.web.routes.site import _page
from nels.web.state import AppState, app_state

router = APIRouter(tags=["run"])
admin = [Depends(require_admin)]


class AcceptRequest(BaseModel):
    query: str = Field(..., min_length=1, max_length=200)
    name: str | None = Field(None, max_length=200)
    also: list[str] = Field(default_factory=list, max_length=10)


@router.get("/run", include_in_schema=False)
def run_page():
    return _page()


@router.get("/api/admin/run", dependencies=admin, summary="What `nels run` is doing: step, cycles, model versions")
def run_status(st: AppState = Depends(app_state)):
    from nels.learn.run import status

    out = status(st.lib)
    out["chart"] = "/api/admin/run.png" if out["ap_history"] else None
    return out


@router.get("/api/admin/run.png", dependencies=admin, summary="Held-out AP per class of every model version")
def run_chart(st: AppState = Depends(app_state)):
    from nels.learn.run import status

    hist = status(st.lib)["ap_history"]
    if not hist:
        raise ApiError(404, "no model version measured yet ('nels run' measures one at its first learning step)")
    return Response(versions_png(hist), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/api/admin/vocabulary/accept", dependencies=admin, status_code=201,
             summary="Make a logged query a new class: `nels run` crawls for it, bootstraps, trains and gates it")
def accept(req: AcceptRequest, st: AppState = Depends(app_state)):
    from nels.learn.run import accept_class

    if not req.query.strip():
        raise ApiError(422, "an empty query cannot become a class")
    return accept_class(st.lib, req.query, req.name, req.also)


def versions_png(history: list[dict]) -> bytes:
    """Held-out mAP per version (promoted / rejected marked) and AP per class per version as a heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = sorted({c for h in history for c, v in (h["per_class"] or {}).items() if v is not None})
    mat = np.array([[np.nan if (h["per_class"] or {}).get(c) is None else h["per_class"][c] for h in history]
                    for c in classes]) if classes else np.zeros((0, len(history)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90, gridspec_kw={"width_ratios": [1, 1.4]})
    x = np.arange(len(history))
    m = np.nanmean(mat, axis=0) if len(classes) else np.zeros(len(history))
    ax1.plot(x, m, color="0.6", zorder=1)
    colours = {"serving": "tab:green", "retired": "tab:blue", "rejected": "tab:red", "candidate": "tab:orange",
               "promoting": "tab:olive"}
    for s in sorted({h["status"] for h in history}):
        idx = [i for i, h in enumerate(history) if h["status"] == s]
        ax1.scatter(x[idx], m[idx], color=colours.get(s, "k"), label=s, zorder=2)
    ax1.set_xticks(x)
    ax1.set_xticklabels([f"c{h['cycle']}" for h in history], fontsize=7)
    ax1.set_xlabel("model version (cycle)")
    ax1.set_ylabel("held-out mAP")
    ax1.set_title("held-out mAP per version")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    if classes:
        im = ax2.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax2.set_yticks(range(len(classes)))
        ax2.set_yticklabels(classes, fontsize=max(4, min(8, 400 // max(len(classes), 1))))
        ax2.set_xticks(x)
        ax2.set_xticklabels([f"c{h['cycle']}" for h in history], fontsize=7)
        fig.colorbar(im, ax=ax2, fraction=0.04, label="AP")
    ax2.set_title("held-out AP per class")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
