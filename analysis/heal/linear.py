"""``linear`` healing (ReplaceMe, Shopkhoev et al. 2025, arXiv 2505.02819; code mts-ai/ReplaceMe).

The residual stream is a chain of points ``r_0 .. r_{2L}`` (TransformerLens names, layer ``l``)::

    r_{2l} = resid_pre[l],  r_{2l+1} = resid_mid[l],  r_{2l+2} = resid_post[l]

and sub-block ``s`` (``2l``: attention of layer l, ``2l+1``: its MLP) adds its output ``out_s`` to ``r_s``:
``r_{s+1} = r_s + out_s``. A plan removes sub-blocks; a *gap* is a maximal run ``a..b`` of consecutive
removed sub-blocks (a run of whole layers ``i..j`` is the gap ``2i..2j+1``). The kept sub-block before the
gap, ``t = a − 1``, gets a linear map ``T`` (d × d) on its output so that, on calibration tokens of the
*original* model,

    r_t + out_t · T  ≈  r_{b+1}          i.e.   X = out_t,  Y = r_{b+1} − r_t,   min ‖X T − Y‖²

which is ReplaceMe's least-squares objective (X: the MLP output of layer i−1 before the residual add,
Y: resid_post[j] − resid_mid[i−1]). We add a ridge term that pulls ``T`` towards the identity (the
unhealed model), scaled by the mean eigenvalue of XᵀX::

    T = (XᵀX + λ s I)⁻¹ (XᵀY + λ s I),   s = tr(XᵀX) / d

XᵀX and XᵀY are accumulated in float64 in forward hooks while the calibration batches stream through
(memory 2·d² per gap, independent of the number of tokens). ``T`` is folded into the projection that
produces ``out_t``: ``out_t = a W_projᵀ (+ b)`` so ``out_t T = a (Tᵀ W_proj)ᵀ (+ b T)``, i.e.
``W' = Tᵀ W`` and ``b' = b T``. The model keeps its architecture and parameter count.

What it does per kind of drop (Llama/Mistral/Qwen layout):
* whole layers i..j: T folds into ``down_proj`` of layer i−1 (ReplaceMe);
* an MLP-only drop at layer i: the gap follows the attention of layer i, T folds into its ``o_proj``;
* an attention-only drop at layer i: T folds into ``down_proj`` of layer i−1;
* a gap starting at the attention of layer 0 has no sub-block before it: it is left unhealed
  (reported in ``report["not_applied"]``); so are gaps after a sub-block with a sandwich norm
  between its projection and the residual add (Gemma-3's post-attention/post-feedforward norms are
  nonlinear, so no linear map folds into the projection). When no gap can be healed, it is an error.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from analysis.models.adapters import get_path, spec_for
from analysis.models.plan import Plan
from analysis.models.surgery import _shallow, pruned_view
from analysis.heal.registry import Healed, HealError, should_stop

O_PROJ = "o_proj"


# ---- gaps -------------------------------------------------------------------------------------------
def gaps(plan: Plan, num_layers: int) -> list[tuple[int, int]]:
    """Maximal runs ``(a, b)`` of removed sub-blocks (``2l`` attention, ``2l+1`` MLP of layer l)."""
    n = plan.normalized()
    dropped = {2 * l for l in n.drop_attn} | {2 * l + 1 for l in n.drop_mlp}
    dropped |= {s for l in n.drop_layers for s in (2 * l, 2 * l + 1)}
    out, start = [], None
    for s in range(2 * num_layers + 1):
        if s < 2 * num_layers and s in dropped:
            start = s if start is None else start
        elif start is not None:
            out.append((start, s - 1))
            start = None
    return out


def _label(s: int) -> str:
    return f"{'attention' if s % 2 == 0 else 'MLP'} {s // 2}"


def _why_not(t: int, spec) -> str | None:
    if t < 0:
        return "the gap starts at layer 0's attention: no kept sub-block before it to fold a map into"
    if t % 2 == 0 and spec.post_attn_norm:
        return (f"{spec.family}: the sandwich norm {spec.post_attn_norm} sits between o_proj and the residual "
                "add, so a linear map cannot be folded into o_proj")
    if t % 2 == 1 and spec.post_mlp_norm:
        return (f"{spec.family}: the sandwich norm {spec.post_mlp_norm} sits between down_proj and the residual "
                "add, so a linear map cannot be folded into down_proj")
    return None


# ---- streaming normal equations ---------------------------------------------------------------------
class NormalEquations:
    """Running XᵀX and XᵀY in float64 for ``min ‖X T − Y‖²``; memory 2·d² doubles whatever the data."""

    def __init__(self, d_in: int, d_out: int, device=None):
        self.xtx = torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
        self.xty = torch.zeros(d_in, d_out, dtype=torch.float64, device=device)
        self.rows = 0
        self.yty = 0.0                     # Σ‖y‖², for the fit's relative residual

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add rows ``x [n, d_in]``, ``y [n, d_out]``."""
        x, y = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        self.xtx.addmm_(x.T, x)
        self.xty.addmm_(x.T, y)
        self.yty += float((y * y).sum())
        self.rows += x.shape[0]

    @property
    def nbytes(self) -> int:
        return self.xtx.numel() * self.xtx.element_size() + self.xty.numel() * self.xty.element_size()

    def solve(self, ridge: float = 1e-4) -> Tensor:
        """``T = (XᵀX + λ s I)⁻¹ (XᵀY + λ s I)`` with ``s = tr(XᵀX)/d`` (ridge towards the identity)."""
        d = self.xtx.shape[0]
        eye = torch.eye(d, self.xty.shape[1], dtype=torch.float64, device=self.xtx.device)
        s = float(torch.trace(self.xtx)) / d
        lam = ridge * s if s > 0 else ridge
        a = self.xtx + lam * torch.eye(d, dtype=torch.float64, device=self.xtx.device)
        if lam == 0:
            return torch.linalg.lstsq(a, self.xty).solution
        return torch.linalg.solve(a, self.xty + lam * eye)

    def residual(self, t: Tensor) -> float:
        """‖X T − Y‖² / ‖Y‖² from the accumulated moments (needs only XᵀX, XᵀY and Σ‖y‖²)."""
        err = float(torch.trace(t.T @ self.xtx @ t) - 2 * torch.trace(t.T @ self.xty)) + self.yty
        return max(err, 0.0) / self.yty if self.yty > 0 else 0.0


# ---- capture ----------------------------------------------------------------------------------------
def _capture_view(model: nn.Module, deepest: int) -> tuple[nn.Module, list[nn.Module], str]:
    """A view of the original model that runs layers 0..deepest only, with its own mid-norm modules
    (hooks go on the view's copies, never on the shared model)."""
    spec = spec_for(model)
    L = len(get_path(model, spec.layers))
    view = pruned_view(model, Plan(drop_layers=list(range(deepest + 1, L))))
    layers = list(get_path(view, spec.layers))
    for layer in layers:
        layer._modules[spec.mid_norm] = _shallow(layer._modules[spec.mid_norm])
    return view, layers, spec.mid_norm


def _install(layers, mid_norm: str, points: set[int], store: dict[int, Tensor]) -> list:
    """Hooks writing residual point ``p`` (see module doc) of the current batch into ``store[p]``."""
    def first(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    handles = []
    for p in points:
        if p == 0:
            handles.append(layers[0].register_forward_pre_hook(
                lambda m, a, kw: store.__setitem__(0, first(a, kw)), with_kwargs=True))
        elif p % 2 == 1:
            handles.append(getattr(layers[p // 2], mid_norm).register_forward_pre_hook(
                lambda m, a, kw, p=p: store.__setitem__(p, first(a, kw)), with_kwargs=True))
        else:
            handles.append(layers[p // 2 - 1].register_forward_hook(
                lambda m, a, out, p=p: store.__setitem__(p, out[0] if isinstance(out, (tuple, list)) else out)))
    return handles


def fit_maps(lm, plan: Plan, tokens: Tensor, batch_size: int = 4, progress=None, stop=None,
             skip_first_token: bool = False) -> tuple[dict[tuple[int, int], NormalEquations], list[dict], int]:
    """Accumulate the normal equations of every healable gap over ``tokens [N, T]`` in one forward pass
    of the original model (up to the deepest layer any gap needs). Returns (equations per gap, the gaps
    left unhealed with the reason, sequences used)."""
    model = lm.model
    spec = spec_for(model)
    todo, skipped = [], []
    for a, b in gaps(plan, lm.num_layers):
        why = _why_not(a - 1, spec)
        (skipped.append({"gap": [_label(a), _label(b)], "reason": why}) if why else todo.append((a, b)))
    if not todo:
        return {}, skipped, 0
    points = {p for a, b in todo for p in (a - 1, a, b + 1)}
    deepest = max((p - 1) // 2 if p % 2 == 0 else p // 2 for p in points)
    view, layers, mid = _capture_view(model, max(deepest, 0))
    d = int(model.config.hidden_size)
    dev = next(model.parameters()).device
    eqs = {g: NormalEquations(d, d, dev) for g in todo}
    store: dict[int, Tensor] = {}
    handles = _install(layers, mid, points, store)
    base = get_path(view, spec.base)
    n, used = tokens.shape[0], 0
    try:
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                if should_stop(stop):
                    break
                store.clear()
                base(input_ids=tokens[s:s + batch_size].to(dev), use_cache=False)
                for (a, b), eq in eqs.items():
                    r_t, r_a, r_b = (store[p][:, 1:] if skip_first_token else store[p] for p in (a - 1, a, b + 1))
                    eq.update(r_a - r_t, r_b - r_t)            # X = out_t, Y = r_{b+1} − r_t; [B·T, d]
                used = min(n, s + batch_size)
                if progress:
                    progress(used / n, f"linear heal: calibration {used}/{n} sequences")
    finally:
        for h in handles:
            h.remove()
        store.clear()
    return eqs, skipped, used


# ---- folding ----------------------------------------------------------------------------------------
def _replaced_linear(old: nn.Linear, t: Tensor) -> nn.Linear:
    """A copy of ``old`` (own parameters) computing ``old(x) · T``: W' = Tᵀ W, b' = b T."""
    new = _shallow(old)
    w = old.weight.detach()
    new.weight = nn.Parameter((t.T @ w.double()).to(w.dtype), requires_grad=False)
    if getattr(old, "bias", None) is not None:
        new.bias = nn.Parameter((old.bias.detach().double() @ t).to(w.dtype), requires_grad=False)
    return new


def fold(view: nn.Module, kept_layers: list[int], target: int, t: Tensor) -> str:
    """Fold ``T`` into the projection producing sub-block ``target``'s output in ``view`` (a pruned view
    whose layer list holds ``kept_layers``). Only the view's own module copies change."""
    spec = spec_for(view)
    layer = get_path(view, spec.layers)[kept_layers.index(target // 2)]
    if target % 2 == 0:
        attn = layer._modules[spec.attn]                     # already the view's own copy (has layer_idx)
        if not isinstance(attn._modules.get(O_PROJ), nn.Linear):
            raise HealError(f"layer {target // 2}'s attention has no {O_PROJ} projection to fold into")
        attn._modules[O_PROJ] = _replaced_linear(attn._modules[O_PROJ], t.to(attn._modules[O_PROJ].weight.device))
        return f"layers.{target // 2}.{spec.attn}.{O_PROJ}"
    mlp = _shallow(layer._modules[spec.mlp])
    layer._modules[spec.mlp] = mlp
    down = mlp._modules.get(spec.down_proj)
    if not isinstance(down, nn.Linear):
        raise HealError(f"layer {target // 2}'s MLP has no {spec.down_proj} projection to fold into")
    mlp._modules[spec.down_proj] = _replaced_linear(down, t.to(down.weight.device))
    return f"layers.{target // 2}.{spec.mlp}.{spec.down_proj}"


def heal_linear(lm, plan: Plan, tokens: Tensor, progress=None, stop=None, ridge: float = 1e-4,
                batch_size: int = 4, skip_first_token: bool = False) -> Healed:
    """ReplaceMe-style linear healing of ``plan`` (see module doc); a view sharing all other weights."""
    t0 = time.perf_counter()
    if ridge is None or ridge < 0:
        raise HealError(f"ridge must be >= 0, got {ridge}")
    view = pruned_view(lm.model, plan)
    settings = {"ridge": ridge, "batch_size": batch_size, "skip_first_token": skip_first_token,
                "calibration": list(tokens.shape) if tokens is not None else None}
    if plan.is_empty:
        return Healed("linear", plan, view, settings, {"seconds": 0.0, "passes": 0, "gaps": [], "not_applied": []})
    eqs, skipped, used = fit_maps(lm, plan, tokens, batch_size, progress, stop, skip_first_token)
    if not eqs:
        raise HealError("linear healing does not apply to this plan: " + "; ".join(s["reason"] for s in skipped),
                        hint="try --heal distill")
    if used == 0:
        raise HealError("linear healing was stopped before it saw any calibration sequence")
    kept = plan.kept_layers(lm.num_layers)
    fitted = []
    for (a, b), eq in eqs.items():
        t = eq.solve(ridge)
        eye = torch.eye(t.shape[0], dtype=t.dtype, device=t.device)
        where = fold(view, kept, a - 1, t)
        fitted.append({"gap": [_label(a), _label(b)], "folded_into": where, "tokens": eq.rows,
                       "relative_residual": eq.residual(t), "relative_residual_unhealed": eq.residual(eye),
                       "map_distance_from_identity": float(torch.linalg.norm(t - eye) / torch.linalg.norm(eye))})
    report = {"seconds": time.perf_counter() - t0, "passes": 1, "sequences": used, "gaps": fitted,
              "not_applied": skipped, "stopped": used < tokens.shape[0],
              "accumulator_bytes": sum(e.nbytes for e in eqs.values())}
    return Healed("linear", plan, view, settings, report)
