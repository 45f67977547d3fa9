"""Helpers that drive TRL's DPOTrainer (imported only by the tests and the speed benchmark)."""

from __future__ import annotations

import torch


def trl_trainer(model, tok, rows: list[dict], out_dir: str, beta: float = 0.1, batch_size: int = 4,
                ref_model=None, lr: float = 1e-4, max_steps: int = 1, precompute: bool = False):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=out_dir, beta=beta, loss_type=["sigmoid"], per_device_train_batch_size=batch_size,
                     learning_rate=lr, max_steps=max_steps, report_to=[], use_cpu=not torch.cuda.is_available(),
                     precompute_ref_log_probs=precompute, save_strategy="no", logging_steps=1,
                     dataloader_num_workers=0, max_length=None, disable_tqdm=True, bf16=False)
    ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=ds, processing_class=tok)


def trl_loss_on_first_batch(trainer):
    """(TRL's loss, its input batch) for the first training batch, no optimizer step."""
    batch = next(iter(trainer.get_train_dataloader()))
    batch = trainer._prepare_inputs(batch)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return loss, batch
