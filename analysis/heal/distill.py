"""``distill`` healing: a short KL distillation from the original (teacher) to the pruned model (student).

The student is a physically pruned copy (:func:`~analysis.models.surgery.prune_copy`); LoRA adapters (``peft``)
on its attention and MLP projections are trained for ``steps`` steps on the calibration windows to
minimise ``KL(p_teacher ‖ p_student)`` of the next-token distributions (mean nats per token), then merged
back into the weights (``merge_and_unload``), so the result is a plain model with the pruned
architecture and no adapter modules. The teacher is the shared base model, run read-only under
``torch.inference_mode``. ``init="linear"`` starts from the ``linear`` healing instead of the bare
pruned model. The defaults (50 steps of 2 windows, rank 8, lr 5e-4) take about a minute for
SmolLM2-135M on two CPU cores.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import Tensor, nn

from analysis.models.forward import row_blocks
from analysis.models.plan import Plan
from analysis.models.surgery import prune_copy
from analysis.heal.registry import Healed, HealError, should_stop

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    out = model(input_ids=ids, use_cache=False)
    return out.logits if hasattr(out, "logits") else out[0]


class _RowBlockKL(torch.autograd.Function):
    """``Σ_rows KL(softmax(t/T) ‖ softmax(s/T))`` over ``[R, vocab]`` logits, a few rows at a time (the rows of
    :func:`~analysis.models.forward.row_blocks`): neither pass makes a float32 copy, a log-softmax or a gradient
    temporary of the whole ``[R, vocab]`` tensor (262k-token vocabularies made those gigabytes per step).
    The gradient is the closed form ``∂/∂s = (softmax(s/T) − softmax(t/T)) / T``."""

    @staticmethod
    def forward(ctx, teacher: Tensor, student: Tensor, temperature: float) -> Tensor:
        rows = torch.empty(student.shape[0], dtype=torch.float32, device=student.device)
        for a, b in row_blocks(student.shape[0], student.device):
            lt = torch.log_softmax(teacher[a:b].float() / temperature, -1)
            ls = torch.log_softmax(student[a:b].float() / temperature, -1)
            rows[a:b] = (lt.exp() * (lt - ls)).sum(-1)
        ctx.save_for_backward(teacher, student)
        ctx.temperature = temperature
        return rows.sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        teacher, student = ctx.saved_tensors
        t = ctx.temperature
        out = torch.empty_like(student)
        scale = grad.float() / t
        for a, b in row_blocks(student.shape[0], student.device):
            ps = torch.softmax(student[a:b].float() / t, -1)
            ps -= torch.softmax(teacher[a:b].float() / t, -1)
            out[a:b] = ps.mul_(scale)
        return None, out, None


def kl_loss(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over positions of KL(teacher ‖ student) in nats (× T², the usual distillation scaling).
    ``[B, T, vocab]`` logits in any dtype (each row upcast to float32 on its own); only the student's get a gradient."""
    v = student_logits.shape[-1]
    t = teacher_logits.detach().reshape(-1, v)
    s = student_logits.reshape(-1, v)
    return _RowBlockKL.apply(t, s, float(temperature)) / s.shape[0] * temperature ** 2


def _student(lm, plan: Plan, init: str, tokens: Tensor, progress, stop) -> nn.Module:
    if init == "linear":
        from analysis.heal.linear import heal_linear

        return copy.deepcopy(heal_linear(lm, plan, tokens, progress=None, stop=stop).model)
    if init != "none":
        raise HealError(f"distill init must be 'none' or 'linear', got {init!r}")
    return prune_copy(lm.model, plan)


def heal_distill(lm, plan: Plan, tokens: Tensor, progress=None, stop=None, **options) -> Healed:
    """LoRA KL distillation of the pruned model towards the original; adapters merged at the end. Training needs
    autograd: it runs with it on even when the caller turned it off (``no_grad`` / ``inference_mode``)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _heal_distill(lm, plan, tokens, progress, stop, **options)


def _heal_distill(lm, plan: Plan, tokens: Tensor, progress=None, stop=None, steps: int = 50, rank: int = 8,
                  lr: float = 5e-4, batch_size: int = 2, temperature: float = 1.0, init: str = "none",
                  seed: int = 0) -> Healed:
    from peft import LoraConfig, get_peft_model
    for name, v, lo in (("steps", steps, 1), ("rank", rank, 1), ("batch_size", batch_size, 1)):
        if not isinstance(v, int) or v < lo:
            raise HealError(f"distill {name} must be an integer >= {lo}, got {v!r}")
    if not lr > 0 or not temperature > 0:
        raise HealError("distill lr and temperature must be positive")
    t0 = time.perf_counter()
    settings = {"steps": steps, "rank": rank, "lr": lr, "batch_size": batch_size, "temperature": temperature,
                "init": init, "seed": seed, "calibration": list(tokens.shape) if tokens is not None else None}
    if plan.is_empty:
        return Healed("distill", plan, prune_copy(lm.model, plan), settings, {"seconds": 0.0, "passes": 0})
    student = _student(lm, plan, init, tokens, progress, stop)
    names = {n.rsplit(".", 1)[-1] for n, m in student.named_modules() if isinstance(m, nn.Linear)}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise HealError("no attention/MLP projections found for LoRA adapters", hint=f"looked for {LORA_TARGETS}")
    dtype = next(student.parameters()).dtype
    student.requires_grad_(False)
    peft_model = get_peft_model(student, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                    target_modules=targets, bias="none"))
    for p in peft_model.parameters():               # adapters train in fp32 even on a bf16 model
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    dev = next(lm.model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(tokens.shape[0], generator=g)
    losses, done, pos = [], 0, 0
    peft_model.train()
    try:
        for step in range(steps):
            if should_stop(stop):
                break
            idx = order[[(pos + i) % len(order) for i in range(batch_size)]]
            pos += batch_size
            ids = tokens[idx].to(dev)
            with torch.inference_mode():
                teacher = _logits(lm.model, ids)       # model dtype: kl_loss upcasts a few rows at a time
            teacher = teacher.clone()                  # an ordinary tensor usable in autograd
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = kl_loss(teacher, _logits(peft_model, ids), temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if progress:
                progress(done / steps, f"distill: step {done}/{steps}, KL {losses[-1]:.4f}")
    finally:
        peft_model.eval()
        merged = peft_model.merge_and_unload()
    merged.requires_grad_(False)
    merged.eval()
    if any("lora" in n.lower() for n, _ in merged.named_modules()):   # pragma: no cover - peft contract
        raise HealError("LoRA adapters were not merged back into the weights")
    merged.to(dtype)
    tail = losses[-max(1, len(losses) // 5):]
    report = {"seconds": time.perf_counter() - t0, "steps": done, "stopped": done < steps,
              "passes": round(done * batch_size / tokens.shape[0], 3),     # epochs over the calibration set
              "kl_first": losses[0] if losses else None, "kl_last": sum(tail) / len(tail) if tail else None,
              "losses": [round(x, 5) for x in losses], "lora_targets": targets,
              "trainable_params": sum(p.numel() for p in trainable)}
    return Healed("distill", plan, merged, settings, report)
