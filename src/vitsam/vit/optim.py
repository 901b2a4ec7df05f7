"""Muon for the transformer blocks' matrices, AdamW for everything else, as one optimizer."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.optim._muon as _muon
from torch import nn

MUON_MOMENTUM = 0.95  # Nesterov momentum of Muon's updates (Jordan et al., 2024; torch's default)


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The model's parameters as (Muon's, AdamW's).

    Muon orthogonalises each update of a hidden layer's weight matrix, so it takes the 2-D
    weights inside the transformer blocks (attention qkv and proj, the MLP's fc1 and fc2).
    Everything else goes to AdamW: the tokenizer's convolutions, the position embedding
    and class token, norms, biases, and the classifier head, a 2-D weight that Muon's
    authors leave to AdamW as they do the input embedding (Jordan, "Muon: An optimizer for
    hidden layers in neural networks", 2024; airbench and modded-nanogpt do the same).
    Raises ValueError when the model has no `blocks`.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no transformer `blocks` for Muon")
    muon = [p for p in blocks.parameters() if p.ndim == 2]
    taken = {id(p) for p in muon}
    return muon, [p for p in model.parameters() if id(p) not in taken]


class MuonAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` over `muon_params` and `torch.optim.AdamW` over `adamw_params`,
    stepped, scheduled and checkpointed as one optimizer.

    One learning rate serves both: Muon's update is rescaled to AdamW's update RMS
    (`adjust_lr_fn="match_rms_adamw"`, 0.2 * sqrt(max(rows, cols)) times the lr; Liu et
    al., "Muon is Scalable for LLM Training", 2025), so `lr` and `weight_decay` mean the
    same for both halves and a learning-rate scheduler moves both. `param_groups` are the
    two optimizers' groups (Muon's first), shared with them, not copies.

    `ns_dtype` is the precision of Muon's Newton-Schulz orthogonalisation: torch runs it in
    bf16, which a CPU without bf16 units emulates at a fifth of the whole training step's
    speed (the fast model, 2-core AVX2 EPYC: 142 img/s against AdamW's 677), so the
    trainer passes fp32 where it trains in fp32.
    """

    def __init__(
        self,
        muon_params: list[nn.Parameter],
        adamw_params: list[nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        fused: bool | None = None,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        self.ns_dtype = ns_dtype  # of Muon's Newton-Schulz iterations
        self.muon = torch.optim.Muon(
            muon_params,
            lr=lr,
            weight_decay=weight_decay,
            momentum=MUON_MOMENTUM,
            nesterov=True,
            adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = torch.optim.AdamW(
            adamw_params, lr, betas=betas, weight_decay=weight_decay, fused=fused
        )
        super().__init__([*muon_params, *adamw_params], {"lr": lr})
        self._link()

    def _link(self) -> None:
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with newton_schulz_in(self.ns_dtype):
            self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._link()  # loading builds new group dicts


@contextlib.contextmanager
def newton_schulz_in(dtype: torch.dtype):
    """Run `torch.optim.Muon`'s Newton-Schulz iterations in `dtype` within the block.

    torch 2.14's `_zeropower_via_newtonschulz` casts to bf16 unconditionally; this swaps in
    the same quintic iteration (Jordan's reference, github.com/KellerJordan/Muon, and
    torch's coefficients) in `dtype`, and puts torch's back on leaving. bf16 keeps torch's.
    """
    if dtype == torch.bfloat16:
        yield
        return
    original = _muon._zeropower_via_newtonschulz

    def zeropower(grad, ns_coefficients, ns_steps, eps):
        a, b, c = ns_coefficients
        x = grad.to(dtype)
        tall = grad.size(0) > grad.size(1)
        if tall:
            x = x.T
        x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
        for _ in range(ns_steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if tall else x

    _muon._zeropower_via_newtonschulz = zeropower
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original
