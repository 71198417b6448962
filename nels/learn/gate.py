"""The promotion gate of `nels run`: a new model version replaces the serving one only if it is no worse on the
fixed held-out set.

A candidate is promoted when (1) its mean AP over the held-out classes does not drop (by more than `tolerance`,
0 by default: "does not drop") and (2) no class loses more than `margin` AP. Classes absent from the held-out
set (AP undefined) are not compared; a class the serving model does not know (a new class) is reported but
cannot be "lost". Both models are measured on the same held-out clips with the same code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Decision:
    promote: bool
    reason: str
    map_new: float
    map_old: float
    losses: dict[str, float] = field(default_factory=dict)  # class -> AP lost (> margin only)


def _defined(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def decide(new: dict[str, float | None], old: dict[str, float | None], margin: float = 0.05,
           tolerance: float = 0.0) -> Decision:
    """Compare per-class held-out AP (class -> AP, None/NaN where undefined) of a candidate and the serving model.

    margin : the most AP one class may lose. tolerance : the most mean AP may drop (0: it must not drop).
    The mean is taken over the classes both models are measured on, so a new class neither helps nor hurts it.
    """
    common = [k for k in new if _defined(new.get(k)) and _defined(old.get(k))]
    added = sorted(k for k in new if _defined(new.get(k)) and not _defined(old.get(k)))
    if not common:
        if added:  # the serving model knows none of the held-out classes: the candidate can only add
            m = sum(new[k] for k in added) / len(added)
            return Decision(True, f"the serving model covers no held-out class; the candidate measures "
                            f"{', '.join(added)} (mAP {m:.4f})", m, float("nan"))
        return Decision(False, "no held-out class is measured", float("nan"), float("nan"))
    m_new = sum(new[k] for k in common) / len(common)
    m_old = sum(old[k] for k in common) / len(common)
    losses = {k: round(old[k] - new[k], 4) for k in common if old[k] - new[k] > margin}
    extra = f"; new classes measured: {', '.join(added)}" if added else ""
    if m_new < m_old - tolerance - 1e-12:
        return Decision(False, f"held-out mAP would drop {m_old:.4f} -> {m_new:.4f}{extra}", m_new, m_old, losses)
    if losses:
        worst = sorted(losses.items(), key=lambda kv: -kv[1])[:3]
        return Decision(False, f"classes would lose more than {margin:.2f} AP: "
                        + ", ".join(f"{k} -{v:.3f}" for k, v in worst) + extra, m_new, m_old, losses)
    return Decision(True, f"held-out mAP {m_old:.4f} -> {m_new:.4f}, no class loses more than {margin:.2f}{extra}",
                    m_new, m_old)
