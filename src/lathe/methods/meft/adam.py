"""Host-side AdamW for the offloaded tables: only the touched rows, each with its own step count.

Same update as `torch.optim.AdamW` (decoupled decay, bias correction), but row j's bias
correction uses t_j, the number of steps that touched row j. `dense` steps every row (the
reference's DeepSpeed CPU Adam over the whole V). DeepSpeed's CPU Adam kernel is used when
asked for (or `auto` on a CUDA machine) and it builds; otherwise the vectorised torch update.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class RowAdam:
    def __init__(self, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, impl: str = "auto"):
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.impl = "torch"
        self._ds = None
        if impl == "deepspeed" or (impl == "auto" and torch.cuda.is_available()):
            self._ds = _deepspeed_kernel(required=impl == "deepspeed")
            if self._ds is not None:
                self.impl = "deepspeed"

    @torch.no_grad()
    def step_rows(self, param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                  steps: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """Update rows `ids` (unique) of `param` with `grad` (len(ids), D); advance their counters."""
        if ids.numel() == 0:
            return
        steps[ids] += 1
        t = steps[ids]
        p, m, v = param[ids], exp_avg[ids], exp_avg_sq[ids]
        if self._ds is not None:
            self._ds_update(p, m, v, t, grad, lr)
        else:
            self._torch_update(p, m, v, t, grad, lr)
        param[ids], exp_avg[ids], exp_avg_sq[ids] = p, m, v

    @torch.no_grad()
    def step_dense(self, param, exp_avg, exp_avg_sq, steps, grad: torch.Tensor, lr: float) -> None:
        steps += 1
        if self._ds is not None:
            self._ds_update(param, exp_avg, exp_avg_sq, steps, grad, lr)
        else:
            self._torch_update(param, exp_avg, exp_avg_sq, steps, grad, lr)

    def _torch_update(self, p, m, v, t, g, lr):
        b1, b2 = self.betas
        tf = t.to(torch.float64)
        bc1 = (1 - b1 ** tf).to(p.dtype)[:, None]
        bc2_sqrt = (1 - b2 ** tf).sqrt().to(p.dtype)[:, None]
        p.mul_(1 - lr * self.weight_decay)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
        p.sub_((lr / bc1) * m / denom)

    def _ds_update(self, p, m, v, t, g, lr):
        """DeepSpeed's kernel takes one step count per call: one call per distinct t."""
        kernel, opt_id, _ = self._ds
        b1, b2 = self.betas
        g = g.contiguous()
        for step in torch.unique(t).tolist():
            rows = (t == step).nonzero().squeeze(1)
            whole = rows.numel() == t.numel()
            pp, mm, vv, gg = (p, m, v, g) if whole else (p[rows], m[rows], v[rows], g[rows].contiguous())
            pp, mm, vv = pp.contiguous(), mm.contiguous(), vv.contiguous()
            kernel.adam_update(opt_id, int(step), lr, b1, b2, self.eps, self.weight_decay, True, pp, gg, mm, vv)
            if whole:
                if pp.data_ptr() != p.data_ptr():
                    p.copy_(pp), m.copy_(mm), v.copy_(vv)
            else:
                p[rows], m[rows], v[rows] = pp, mm, vv


def _deepspeed_kernel(required: bool):
    """(kernel module, optimizer id, owner) of DeepSpeedCPUAdam, or None when it does not build."""
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        dummy = torch.nn.Parameter(torch.zeros(1))
        opt = DeepSpeedCPUAdam([dummy], lr=1e-3, adamw_mode=True)
        return opt.ds_opt_adam, opt.opt_id, opt  # keep opt alive: the kernel's state is keyed by its id
    except Exception as e:  # noqa: BLE001 - any build/import failure means "use the torch update"
        if required:
            raise RuntimeError(f"adapter.adam_impl=deepspeed: DeepSpeedCPUAdam does not build here ({e})") from None
        log.info("DeepSpeedCPUAdam unavailable (%s); using the vectorised torch update", e)
        return None
