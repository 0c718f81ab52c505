"""Prefix-state reuse: evaluating many pruning plans while sharing the forward work they have in common.

Plans sorted by their per-layer decisions form a depth-first walk of the trie of plans
(:func:`prefix_schedule`); each plan's forward starts at the first layer where it differs from the plan
before it, fed the residual stream (``resid_pre [B, n, d]``) cached there (:func:`prefix_batch`). The
final hidden states are bit-identical to each plan's own full forward. Used by the sweep, by agreement
and by the drop-one / SLEB / BlockPruner ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from analysis.models.adapters import get_path, spec_for
from analysis.models.forward import final_hidden, oom_guard
from analysis.models.plan import Plan
from analysis.models.surgery import pruned_view


def plan_key(plan: Plan) -> tuple:
    """A hashable key of what a plan drops (normalised: two plans removing the same blocks share it)."""
    n = plan.normalized()
    return tuple(n.drop_attn), tuple(n.drop_mlp), tuple(n.drop_layers)


def plan_decisions(plan: Plan, num_layers: int) -> tuple[int, ...]:
    """Per layer: 0 keep, 1 attention dropped, 2 MLP dropped, 3 whole layer dropped."""
    n = plan.normalized()
    dl, da, dm = set(n.drop_layers), set(n.drop_attn), set(n.drop_mlp)
    return tuple(3 if i in dl else (1 if i in da else 0) | (2 if i in dm else 0) for i in range(num_layers))


@dataclass
class PrefixStep:
    """One plan in the schedule: which layers its view runs, from which cached residual-stream input."""

    key: tuple | None            # None: the original model (records every layer input)
    start: int                   # first layer run; its input resid_pre[start] comes from the state cache
    view: nn.Module | None       # None: the original plan itself (reuses the first step's NLL)
    layer_ids: list[int]         # original index of each layer in the view, in order
    record: bool                 # keep this step's layer inputs for the steps after it


def prefix_schedule(lm, plans: list[tuple[tuple, Plan]]) -> list[PrefixStep]:
    """Order plans so that each shares the longest possible prefix with the one before it.

    Sorted by their per-layer decisions, plans form a depth-first walk of the trie of plans, and in
    sorted order the longest common prefix with *any* earlier plan is the one with the predecessor.
    Each plan starts at the first layer where its decisions differ from its predecessor's (or the
    nearest cached layer before it), fed the cached ``resid_pre`` there, which is bit-identical to
    what its own full forward would compute.
    """
    L, model = lm.num_layers, lm.model
    steps = [PrefixStep(None, 0, None, list(range(L)), True)]
    owner = {l: 0 for l in range(L)}              # which step cached each layer's input (after the last step)
    read_from_original = 0                        # deepest layer input a later step reads from step 0
    prev = (0,) * L
    ordered = sorted(((plan_decisions(p, L), key, p) for key, p in plans), key=lambda t: t[0])
    for i, (dec, key, p) in enumerate(ordered):
        if not any(dec):                          # the original plan itself: step 0 must run to the end
            steps.append(PrefixStep(key, L, None, [], False))
            read_from_original = L - 1
            continue
        j = next(x for x in range(L) if dec[x] != prev[x])
        kept = [x for x in range(L) if dec[x] != 3]
        start = max(l for l in owner if l <= j and any(k >= l for k in kept))
        if owner[start] == 0:
            read_from_original = max(read_from_original, start)
        n = p.normalized()
        tail = Plan(n.drop_attn, n.drop_mlp, sorted(set(n.drop_layers) | set(range(start))))
        layer_ids = [k for k in kept if k >= start]
        steps.append(PrefixStep(key, start, pruned_view(model, tail), layer_ids, i + 1 < len(ordered)))
        owner = {l: o for l, o in owner.items() if l <= start} | {l: len(steps) - 1 for l in layer_ids}
        prev = dec
    # the original only runs as deep as a later step reads (its own output is needed only for k = 0)
    upto = read_from_original
    steps[0] = PrefixStep(None, 0, pruned_view(model, Plan(drop_layers=list(range(upto + 1, L)))),
                          list(range(upto + 1)), True)
    return steps


def prefix_batch(steps: list[PrefixStep], ids: Tensor):
    """Yield ``(plan key, view, final hidden [B, n, d])`` for one window batch, walking the schedule with
    a state cache; the view's LM head turns the hidden states into logits."""
    states: dict[int, Tensor] = {}
    base_hidden = None
    for st in steps:
        if st.view is None:                                   # the original model: computed by step 0
            yield st.key, steps[0].view, base_hidden
            continue
        recorded: dict[int, Tensor] = {}
        handles = []
        if st.record:                                         # the view's layers are its own copies
            layers = get_path(st.view, spec_for(st.view).layers)
            for pos, orig in enumerate(st.layer_ids):
                handles.append(layers[pos].register_forward_pre_hook(
                    lambda m, a, kw, orig=orig: recorded.__setitem__(orig, a[0] if a else kw["hidden_states"]),
                    with_kwargs=True))
        try:
            if st.key is None:
                hidden = base_hidden = oom_guard(lambda: final_hidden(st.view, ids), "evaluation")
            else:
                hidden = oom_guard(lambda: final_hidden(st.view, embeds=states[st.start]), "evaluation")
        finally:
            for h in handles:
                h.remove()
        states = {l: v for l, v in states.items() if l <= st.start}
        states.update(recorded)
        if st.key is not None:
            yield st.key, st.view, hidden
