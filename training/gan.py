"""Conditional GAN training: the adversarial loop, a judge classifier, and the served generator.

The generator learns images scaled to [-1, 1]; the served generator maps them to [0, 1]. Quality is the
share of generated samples that a digits classifier (the judge, trained from the `eval.judge` zoo config,
by default digits-cnn) assigns to the class that was asked for. That share alone rewards mode collapse (one
perfect image per class scores 100 %), so diversity is measured too: the mean pairwise distance between
generated samples of a class, relative to the same distance between real samples. The best checkpoint is the
one with the highest judge accuracy among epochs whose diversity is at least `eval.min_diversity`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from training.architectures.gan import Discriminator, GANConfig, Generator
from training.config import RunConfig, apply_overrides, load_config
from training.tasks import ServedModel


class ServedGenerator(nn.Module):
    """Latent [B, Z] and class [B] (int64) -> image [B, C, H, W] in [0, 1]."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return (self.generator(latent, label) + 1) / 2


def load_generator(resolved: dict, state: dict) -> ServedGenerator:
    generator = Generator(GANConfig(**resolved["network"]))
    generator.load_state_dict(state)
    return ServedGenerator(generator).eval()


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


def train_judge(config: RunConfig, out: Path, log: Callable[[str], None]) -> Callable[[np.ndarray], np.ndarray]:
    """Train (or reuse) the judge classifier inside the run folder; return numpy images -> probabilities."""
    from training.trainer import fit, load_trained, torch_predictor

    judge_dir = out / "judge"
    if not (judge_dir / "summary.json").exists():
        judge_config = load_config(config.eval.get("judge", "digits-cnn"))
        if "judge_epochs" in config.eval:
            judge_config = apply_overrides(judge_config, [f"train.epochs={int(config.eval['judge_epochs'])}"])
        log(f"training the judge classifier ({judge_config.name}) in {judge_dir}")
        fit(judge_config, judge_dir, log=lambda _m: None)
    resolved, _, network = load_trained(judge_dir)
    return torch_predictor(ServedModel(network, resolved["resolved_task"]))


def fit_gan(config: RunConfig, out: Path, log: Callable[[str], None] = print, quiet: bool = True,
            resume: bool = False, stop_after: int | None = None) -> dict:
    """Adversarial training of a conditional generator and discriminator (DCGAN recipe: Adam, beta1 0.5)."""
    from training.trainer import (Progress, finish_run, format_result, prepare, read_history, save_checkpoint,
                                  write_resolved_config)

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    prepared = prepare(config)
    X = prepared.X["train"]
    pixel_max = float(prepared.data.X.max())
    images = torch.from_numpy(X / (pixel_max / 2) - 1)  # [N, C, H, W] in [-1, 1]
    labels = torch.from_numpy(prepared.y["train"])
    from training.architectures import resolve_hyper

    hyper = resolve_hyper("gan", config.model, list(X.shape[1:]), len(prepared.labels))
    gan_cfg = GANConfig(**hyper)
    generator, discriminator = Generator(gan_cfg), Discriminator(gan_cfg)
    lr = config.optimizer.lr
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999),
                             weight_decay=config.optimizer.weight_decay)
    bce = nn.BCEWithLogitsLoss()
    rng = torch.Generator().manual_seed(config.seed)

    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(config, prepared, hyper, out)
    judge = train_judge(config, out, log)
    served = ServedGenerator(generator)
    per_class = int(config.eval.get("samples_per_class", 100))
    min_diversity = float(config.eval.get("min_diversity", 0.6))
    reference = within_class_distance(X / pixel_max, prepared.y["train"])
    val_inputs = evaluation_inputs(gan_cfg.num_classes, gan_cfg.latent_dim, per_class, config.seed + 100)

    def generate(latents: np.ndarray, classes: np.ndarray) -> np.ndarray:
        served.eval()
        with torch.no_grad():
            return served(torch.from_numpy(latents), torch.from_numpy(classes)).numpy()

    state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "stale": 0}
    if not (resume and (out / "last.pt").exists()):
        (out / "best.pt").unlink(missing_ok=True)  # a checkpoint of an earlier run in this folder is not ours
    else:
        ckpt = torch.load(out / "last.pt", weights_only=True)
        generator.load_state_dict(ckpt["generator"])
        discriminator.load_state_dict(ckpt["discriminator"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        rng.set_state(ckpt["rng"]["generator"])
        state = ckpt["state"]
        log(f"resuming {out} after epoch {state['epoch']}")
    history = read_history(out, state["epoch"])
    progress = Progress(quiet)
    batch = config.train.batch_size
    real_target = float(config.eval.get("label_smoothing", 0.9))  # one-sided label smoothing (Salimans 2016)
    epochs_this_call = 0
    with open(out / "metrics.jsonl", "w") as metrics_file:
        for row in history:
            metrics_file.write(json.dumps(row) + "\n")
        for epoch in range(state["epoch"] + 1, config.train.epochs + 1):
            generator.train()
            discriminator.train()
            order = torch.randperm(len(images), generator=rng)
            d_total = g_total = 0.0
            steps = 0
            with progress.bar(math.ceil(len(order) / batch), epoch, config.train.epochs) as bar:
                for i in range(0, len(order), batch):
                    idx = order[i:i + batch]
                    real, real_labels = images[idx], labels[idx]
                    z = torch.randn(len(idx), gan_cfg.latent_dim, generator=rng)
                    fake_labels = torch.randint(0, gan_cfg.num_classes, (len(idx),), generator=rng)
                    fake = generator(z, fake_labels)
                    # discriminator: real -> real_target, generated -> 0
                    opt_d.zero_grad(set_to_none=True)
                    real_logits = discriminator(real, real_labels)
                    d_loss = bce(real_logits, torch.full_like(real_logits, real_target)) + \
                        bce(discriminator(fake.detach(), fake_labels), torch.zeros(len(idx)))
                    d_loss.backward()
                    opt_d.step()
                    # generator: make the discriminator answer "real"
                    opt_g.zero_grad(set_to_none=True)
                    g_loss = bce(discriminator(fake, fake_labels), torch.ones(len(idx)))
                    g_loss.backward()
                    opt_g.step()
                    d_total += d_loss.item()
                    g_total += g_loss.item()
                    steps += 1
                    bar.update(1)
                    bar.set_postfix(d_loss=f"{d_total / steps:.3f}", g_loss=f"{g_total / steps:.3f}")
            val = generation_metrics(generate, judge, *val_inputs, pixel_max, reference)
            score = val["judge_accuracy"]
            row = {"epoch": epoch, "d_loss": d_total / steps, "g_loss": g_total / steps,
                   **{f"val_{k}": v for k, v in val.items()}}
            improved = val["diversity"] >= min_diversity and score > state["best"]
            if improved:
                state.update(best=score, best_epoch=epoch, stale=0)
                save_checkpoint(generator.state_dict(), out / "best.pt")
            else:
                state["stale"] += 1
            state["epoch"] = epoch
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            save_checkpoint({"generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                        "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                        "rng": {"torch": torch.get_rng_state(), "generator": rng.get_state()}, "state": state},
                       out / "last.pt")
            log(f"epoch {epoch:3d}/{config.train.epochs}  d_loss {row['d_loss']:.4f}  g_loss {row['g_loss']:.4f}"
                f"  val_judge_accuracy {score:.4f}  val_diversity {val['diversity']:.3f}{'  *' if improved else ''}")
            epochs_this_call += 1
            if stop_after is not None and epochs_this_call >= stop_after:
                return {}

    if not (out / "best.pt").exists():
        raise ValueError(f"no epoch reached eval.min_diversity {min_diversity} (the generator collapsed); "
                         "train longer or lower the learning rate")
    generator.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    test_inputs = evaluation_inputs(gan_cfg.num_classes, gan_cfg.latent_dim, per_class, config.seed)
    test = generation_metrics(generate, judge, *test_inputs, pixel_max, reference)
    summary = finish_run(config, prepared, out, started, state, test, {"val_judge_accuracy": state["best"]})
    from training.plots import image_grid, plot_curves

    (out / "plots").mkdir(exist_ok=True)
    plot_curves(out, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    shown = evaluation_inputs(gan_cfg.num_classes, gan_cfg.latent_dim, 8, config.seed)
    samples = generate(*shown)[:, 0].reshape(gan_cfg.num_classes, 8, *X.shape[-2:])
    image_grid(out / "plots" / "samples.png", list(samples), prepared.labels, "generated samples, one row per class")
    log(format_result(summary))
    return summary
