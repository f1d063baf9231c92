"""Multi-task training with PyTorch Lightning and fastmtl.

Three regression tasks on a shared trunk, two of which conflict on half of the input space. The
LightningModule uses manual optimisation; ``FastMTLCallback.backward`` combines the task gradients
of the trunk (UPGrad here), gives each head its gradient, and logs the task weights, gradient norms
and cosines. The callback also saves the method's state in Lightning checkpoints.

Run:  python examples/lightning_mtl.py [--method upgrad] [--epochs 10]
Prints the validation loss of each task before and after training. Needs ``lightning``
(``pip install lightning``, in fastmtl's ``dev`` extra).
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastmtl.integrations.lightning import FastMTLCallback

TASKS = ("sine", "anti_sine", "square")


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=g) * 4 - 2
    s = torch.sin(x.sum(1))
    y = torch.stack([s, torch.where(x[:, 0] > 0, -s, s), (x ** 2).mean(1)], 1)
    return TensorDataset(x, y)


class MultiTaskRegression(L.LightningModule):
    def __init__(self, method: str = "upgrad", lr: float = 1e-2, generator=None, **hyperparameters):
        super().__init__()
        self.automatic_optimization = False
        self.lr = lr
        self.trunk = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(32, 1) for _ in TASKS])
        self.mtl = FastMTLCallback(method, generator=generator, task_names=TASKS, **hyperparameters)

    def configure_callbacks(self):
        return [self.mtl]

    def task_losses(self, batch):
        x, y = batch
        h = self.trunk(x)
        return [nn.functional.mse_loss(head(h).squeeze(-1), y[:, k]) for k, head in enumerate(self.heads)]

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        losses = self.task_losses(batch)
        self.mtl.backward(self, losses, self.trunk.parameters(), head_params=self.heads)
        opt.step()

    def validation_step(self, batch, batch_idx):
        for name, loss in zip(TASKS, self.task_losses(batch)):
            self.log(f"val/{name}", loss)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def validation_losses(model: MultiTaskRegression, data: TensorDataset) -> list:
    with torch.no_grad():
        return [float(l) for l in model.task_losses(data.tensors)]


def train(method: str = "upgrad", epochs: int = 10, seed: int = 0, **trainer_kwargs):
    """Fit the example model; returns ``(model, trainer, validation losses before, after)``."""
    L.seed_everything(seed, verbose=False)
    train_data, val_data = make_data(1024, seed), make_data(256, seed + 1)
    model = MultiTaskRegression(method)
    before = validation_losses(model, val_data)
    kwargs = dict(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                  enable_model_summary=False, log_every_n_steps=8)
    kwargs.update(trainer_kwargs)
    trainer = L.Trainer(**kwargs)
    trainer.fit(model, DataLoader(train_data, batch_size=64, shuffle=True), DataLoader(val_data, batch_size=256))
    return model, trainer, before, validation_losses(model, val_data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="upgrad")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    _, _, before, after = train(args.method, args.epochs, args.seed)
    for name, b, a in zip(TASKS, before, after):
        print(f"{name:10s} validation MSE {b:.4f} -> {a:.4f}")


if __name__ == "__main__":
    main()
