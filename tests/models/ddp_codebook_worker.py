"""Run under torchrun by test_tokenizer_train.py: after DDP training on different data per rank, every rank
must hold the same codebook and weights (data init, EMA updates and dead-code restarts agree)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from maskvit_mpc.models.tokenizer import TokenizerModelConfig, VQModel
from maskvit_mpc.models.training import seed_everything, setup_distributed, unwrap, wrap_ddp


def main(out: Path) -> None:
    ctx = setup_distributed("cpu")
    lines = []
    for update in ("gradient", "ema"):
        seed_everything(0)
        cfg = TokenizerModelConfig(
            image_size=16, grid_size=4, base_channels=8, channel_mult=[1, 2, 2], code_dim=8, codebook_size=64,
            codebook_update=update, dead_code_steps=2,
        )  # fmt: skip
        model = wrap_ddp(VQModel(cfg), ctx)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(100 + ctx.rank)  # each rank its own frames
        for _ in range(6):
            frames = torch.rand(4, 3, 16, 16, generator=gen)
            out_ = model(frames)
            loss = (out_.reconstruction - frames).pow(2).mean() + out_.quantizer_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        state = torch.cat([t.detach().float().flatten() for t in unwrap(model).state_dict().values()])
        gathered = [torch.zeros_like(state) for _ in range(ctx.world_size)]
        dist.all_gather(gathered, state)
        restarted = int((unwrap(model).quantizer.steps_unused == 0).sum())
        lines.append(f"{update} same={all(torch.equal(gathered[0], g) for g in gathered)} fresh={restarted}")
    if ctx.is_main:
        out.write_text("\n".join(lines) + "\n")
    ctx.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
