"""Conditional GAN training: the adversarial step of the epoch loop, and how generated images are scored.

The generator learns images scaled to [-1, 1]; the served generator maps them to [0, 1]. Quality is the
share of generated samples that a digits classifier (the judge, trained from the `eval.judge` zoo config,
by default digits-cnn, by training.trainer.train_judge) assigns to the class that was asked for. That share alone
rewards mode collapse (one perfect image per class scores 100 %), so diversity is measured too: the mean pairwise
distance between generated samples of a class, relative to the same distance between real samples. The best
checkpoint is the one with the highest judge accuracy among epochs whose diversity is at least `eval.min_diversity`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from training.architectures.gan import Discriminator, GANConfig, Generator
from training.config import RunConfig
from training.network import ServedGenerator
from training.plots import image_grid


def evaluation_inputs(num_classes: int, latent_dim: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed latents and classes for scoring: `per_class` samples of every class."""
    rng = np.random.default_rng(seed + 1)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return rng.standard_normal((len(labels), latent_dim)).astype(np.float32), labels


def within_class_distance(images: np.ndarray, labels: np.ndarray, per_class: int = 100) -> float:
    """Mean pairwise Euclidean distance between images of the same class (up to `per_class` of each)."""
    distances = []
    for c in np.unique(labels):
        a = images[labels == c][:per_class].reshape(-1, images[0].size).astype(np.float64)
        sq = (a * a).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None] - 2 * a @ a.T, 0)
        distances.append(np.sqrt(d2).sum() / (len(a) * (len(a) - 1)))
    return float(np.mean(distances))


def generation_metrics(generate: Callable, judge: Callable, latents: np.ndarray, labels: np.ndarray,
                       pixel_max: float, reference: float) -> dict[str, float]:
    """Judge accuracy (share classified as the class asked for) and diversity relative to real data."""
    images = generate(latents, labels)  # [0, 1]
    accuracy = float((judge(images * pixel_max).argmax(1) == labels).mean())  # the judge takes data units
    return {"judge_accuracy": accuracy, "diversity": within_class_distance(images, labels) / reference}


class GANStep:
    """Adversarial training of a conditional generator and discriminator (DCGAN recipe: Adam, beta1 0.5).

    `judge` (numpy images in data units -> class probabilities) must be set before the first epoch."""

    monitor = "val_judge_accuracy"
    maximize = True

    def __init__(self, config: RunConfig, prepared, hyper: dict):
        self.config, self.prepared, self.hyper = config, prepared, hyper
        X = prepared.X["train"]
        self.pixel_max = float(prepared.data.X.max())
        self.images = torch.from_numpy(X / (self.pixel_max / 2) - 1)  # [N, C, H, W] in [-1, 1]
        self.labels = torch.from_numpy(prepared.y["train"])
        self.gan = GANConfig(**hyper)
        self.generator, self.discriminator = Generator(self.gan), Discriminator(self.gan)
        lr = config.optimizer.lr
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999),
                                      weight_decay=config.optimizer.weight_decay)
        self.bce = nn.BCEWithLogitsLoss()
        self.served = ServedGenerator(self.generator)
        self.judge: Callable[[np.ndarray], np.ndarray] | None = None
        self.per_class = int(config.eval.get("samples_per_class", 100))
        self.min_diversity = float(config.eval.get("min_diversity", 0.6))
        self.reference = within_class_distance(X / self.pixel_max, prepared.y["train"])
        self.val_inputs = evaluation_inputs(self.gan.num_classes, self.gan.latent_dim, self.per_class,
                                            config.seed + 100)
        self.real_target = float(config.eval.get("label_smoothing", 0.9))  # one-sided smoothing (Salimans 2016)

    def generate(self, latents: np.ndarray, classes: np.ndarray) -> np.ndarray:
        self.served.eval()
        with torch.no_grad():
            return self.served(torch.from_numpy(latents), torch.from_numpy(classes)).numpy()

    def train_batch(self, idx: torch.Tensor, rng: torch.Generator) -> tuple[float, float]:
        """One discriminator and one generator update; their losses."""
        real, real_labels = self.images[idx], self.labels[idx]
        z = torch.randn(len(idx), self.gan.latent_dim, generator=rng)
        fake_labels = torch.randint(0, self.gan.num_classes, (len(idx),), generator=rng)
        fake = self.generator(z, fake_labels)
        # discriminator: real -> real_target, generated -> 0
        self.opt_d.zero_grad(set_to_none=True)
        real_logits = self.discriminator(real, real_labels)
        d_loss = self.bce(real_logits, torch.full_like(real_logits, self.real_target)) + \
            self.bce(self.discriminator(fake.detach(), fake_labels), torch.zeros(len(idx)))
        d_loss.backward()
        self.opt_d.step()
        # generator: make the discriminator answer "real"
        self.opt_g.zero_grad(set_to_none=True)
        g_loss = self.bce(self.discriminator(fake, fake_labels), torch.ones(len(idx)))
        g_loss.backward()
        self.opt_g.step()
        return d_loss.item(), g_loss.item()

    def epoch(self, epoch: int, order: torch.Generator, progress) -> dict:
        self.generator.train()
        self.discriminator.train()
        index = torch.randperm(len(self.images), generator=order)
        batch = self.config.train.batch_size
        d_total = g_total = 0.0
        steps = 0
        with progress.bar(math.ceil(len(index) / batch), epoch, self.config.train.epochs) as bar:
            for i in range(0, len(index), batch):
                d_loss, g_loss = self.train_batch(index[i:i + batch], order)
                d_total += d_loss
                g_total += g_loss
                steps += 1
                bar.update(1)
                bar.set_postfix(d_loss=f"{d_total / steps:.3f}", g_loss=f"{g_total / steps:.3f}")
        val = generation_metrics(self.generate, self.judge, *self.val_inputs, self.pixel_max, self.reference)
        return {"epoch": epoch, "d_loss": d_total / steps, "g_loss": g_total / steps,
                **{f"val_{k}": v for k, v in val.items()}}

    def score(self, row: dict) -> float | None:
        return row["val_judge_accuracy"] if row["val_diversity"] >= self.min_diversity else None

    def end_epoch(self, score: float | None) -> None:
        pass

    def best_weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.generator.state_dict().items()}

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, checkpoint: dict) -> None:
        self.generator.load_state_dict(checkpoint["generator"])
        self.discriminator.load_state_dict(checkpoint["discriminator"])
        self.opt_g.load_state_dict(checkpoint["opt_g"])
        self.opt_d.load_state_dict(checkpoint["opt_d"])

    def describe(self, row: dict) -> str:
        return (f"d_loss {row['d_loss']:.4f}  g_loss {row['g_loss']:.4f}  val_judge_accuracy "
                f"{row['val_judge_accuracy']:.4f}  val_diversity {row['val_diversity']:.3f}")

    def evaluate_best(self, out: Path, state: dict) -> tuple[dict, dict]:
        """(test metrics, the best epoch's validation judge accuracy) of the best epoch's generator."""
        if not (out / "best.pt").exists():
            raise ValueError(f"no epoch reached eval.min_diversity {self.min_diversity} (the generator collapsed); "
                             "train longer or lower the learning rate")
        self.generator.load_state_dict(torch.load(out / "best.pt", weights_only=True))
        inputs = evaluation_inputs(self.gan.num_classes, self.gan.latent_dim, self.per_class, self.config.seed)
        test = generation_metrics(self.generate, self.judge, *inputs, self.pixel_max, self.reference)
        return test, {"val_judge_accuracy": state["best"]}

    def plot(self, out: Path) -> list[Path]:
        """A grid of generated samples, one row per class."""
        shown = evaluation_inputs(self.gan.num_classes, self.gan.latent_dim, 8, self.config.seed)
        samples = self.generate(*shown)[:, 0].reshape(self.gan.num_classes, 8, *self.images.shape[-2:])
        return [image_grid(out / "plots" / "samples.png", list(samples), self.prepared.labels,
                           "generated samples, one row per class")]
