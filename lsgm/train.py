"""The training loop: stage 1 (the VAE alone), then joint LSGM training (or the score model alone).

Phases, by step:
    vae       steps [0, stage1_steps) — NVAE's own objective (KL warm-up, balancing, spectral
              and norm regularisation), reusing `nvae.train`;
    joint     the rest — the VAE on −ELBO with the SGM prior, the score model on its DSM objective,
              each with its own optimizer, learning rate (warm-up + cosine) and gradient clipping;
    disjoint  instead of joint: the VAE frozen, the score model trained on its latents (LDM-style);
    score     pixel-space models (no VAE): the score model alone (DSM, or L_simple for DDPM).
Every step is guarded: a non-finite loss or gradient skips both updates and is counted. The score
model's weights are averaged (EMA) and evaluated with the average. A checkpoint holds everything
the next step depends on (weights, EMA, optimizers, step, data order, RNG states), so a resumed run
continues the same trajectory; SIGINT/SIGTERM save and stop at the end of the current step.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from nvae.train import FitConfig, kl_warmup_weight, make_optimizer, set_lr, training_loss, warmup_cosine_lr

from . import distributed
from .build import build_model, load, load_splits, plain
from .checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from .conditioning import random_masks
from .data import BatchStream
from .ema import EMA
from .evaluate import generate, test_nll, validation_bound
from .log import RunLogger
from .objective import joint_loss, score_loss

MODES = ("joint", "disjoint", "vae")
ACTIVE_CHANNEL_IMAGES = 4096  # training images over which drop_inactive_var averages the KL per channel


@dataclass
class Progress:
    step: int = 0
    skipped: int = 0
    best_val: float = math.inf
    best_step: int = -1


class Trainer:
    """Trains the model of `cfg` (the root config) in `run_dir`."""

    def __init__(self, cfg, run_dir: str | Path):
        self.cfg, self.t = cfg, cfg.train
        if self.t.mode not in MODES:
            raise ValueError(f"unknown train.mode {self.t.mode!r}; valid: {list(MODES)}")
        if self.t.stage1_steps > self.t.steps:
            raise ValueError(f"train.stage1_steps ({self.t.stage1_steps}) exceeds train.steps ({self.t.steps})")
        self.run_dir = Path(run_dir)
        self.context = distributed.setup(cfg.device)
        if cfg.get("threads"):
            torch.set_num_threads(cfg.threads)
        self.device = self.context.device
        torch.manual_seed(cfg.seed + self.context.rank)
        self.data = load_splits(cfg.data)
        train = self.data["train"]
        self.model = build_model(cfg, train.shape, train.levels).to(self.device)
        self.memory_format = torch.channels_last if self.t.get("channels_last") else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.vae = self.model.vae
        if self.vae is None and self.t.mode != "joint":
            raise ValueError("train.mode only applies to latent models; a pixel-space model trains its score model")
        self.vae_parameters = list(self.vae.parameters()) if self.vae is not None else []
        score_named = [(n, p) for n, p in self.model.named_parameters() if not n.startswith("vae.")]
        self.score_parameters = [p for _, p in score_named]
        self.fit_config = FitConfig(optimizer=self.t.optimizer_vae, lr=self.t.lr_vae,
                                    weight_decay=self.t.weight_decay_vae, kl_balance=self.t.kl_balance,
                                    spectral_weight=self.t.spectral_weight, norm_weight=self.t.norm_weight)
        self.vae_optimizer = make_optimizer(self.vae_parameters, self.fit_config) if self.vae_parameters else None
        self.score_optimizer = torch.optim.AdamW(self.score_parameters, lr=self.t.lr_score,
                                                 weight_decay=self.t.weight_decay_score)
        self.ema = EMA(score_named, self.t.ema_decay)
        world = self.context.world_size
        if self.t.batch_size % world:
            raise ValueError(f"train.batch_size ({self.t.batch_size}) must be divisible by the {world} processes")
        self.stream = BatchStream(train.to(self.device), self.t.batch_size // world, seed=cfg.seed,
                                  rank=self.context.rank, world_size=world)
        self.progress = Progress()
        self.stop_requested = False
        self.logger = self._make_logger() if self.context.is_main else None
        self._resume()

    # --- setup ------------------------------------------------------------------------------------
    def _make_logger(self) -> RunLogger:
        log = plain(self.cfg.logger)
        return RunLogger(self.run_dir, mode=log.get("mode", "offline"), project=log.get("project", "lsgm"),
                         name=log.get("name") or self.run_dir.name, group=log.get("group"),
                         tags=log.get("tags") or (), notes=log.get("notes"), entity=log.get("entity"),
                         config=OmegaConf.to_container(self.cfg, resolve=True))

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _resume(self) -> None:
        path = self.t.resume or (self.checkpoint_dir / "last.pt" if (self.checkpoint_dir / "last.pt").exists()
                                 else None)
        if path is None:
            return
        state = load_checkpoint(path, map_location=self.device)
        load_model_state(self.model, state["model"], path)
        self.ema.load_state_dict(state["ema"])
        if self.vae_optimizer is not None:
            self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        self.score_optimizer.load_state_dict(state["score_optimizer"])
        self.stream.load_state_dict(state["data"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
        if self.context.is_main:
            print(f"resumed from {path} at step {self.progress.step}")

    def state(self) -> dict:
        train = self.data["train"]
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "data_shape": tuple(train.shape), "levels": train.levels,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict() if self.vae_optimizer is not None else None,
            "score_optimizer": self.score_optimizer.state_dict(),
            "data": self.stream.state_dict(), "progress": vars(self.progress).copy(), "rng": rng_state(),
            "step": self.progress.step,
        }

    def save(self, name: str) -> Path:
        path = self.checkpoint_dir / name
        if self.context.is_main:
            save_checkpoint(path, self.state())
        return path

    # --- phases and schedules -------------------------------------------------------------------------
    def phase(self, step: int) -> str:
        if self.vae is None:
            return "score"
        if self.t.mode == "vae" or step < self.t.stage1_steps:
            return "vae"
        return self.t.mode

    def _progress(self, step: int, start: int) -> float:
        """Progress p ∈ [0, 1) of a schedule that runs from step `start` to the end of the run."""
        return max(step - start, 0) / max(self.t.steps - start, 1)

    def score_progress(self, step: int) -> float:
        """Progress of the score model's training: the phase after stage 1, or the whole run when the score model
        also learns during stage 1 (`score_in_stage1`)."""
        stage1 = self.t.stage1_steps if self.vae is not None and not self.t.get("score_in_stage1") else 0
        return self._progress(step, stage1)

    def _set_learning_rates(self, phase: str, step: int) -> None:
        """Warm-up + cosine: the VAE's over the whole run (or restarted at `lr_vae_joint` for the joint phase,
        LSGM's recipe after a long stage 1), the score model's over its own training (`score_progress`)."""
        t = self.t
        if self.vae_optimizer is not None:
            restart = phase != "vae" and t.get("lr_vae_joint")
            lr, p = (t.lr_vae_joint, self._progress(step, t.stage1_steps)) if restart else (t.lr_vae, step / t.steps)
            set_lr(self.vae_optimizer, warmup_cosine_lr(p, lr, t.min_lr_fraction * lr, t.warmup_fraction))
        set_lr(self.score_optimizer, warmup_cosine_lr(self.score_progress(step), t.lr_score,
                                                      t.min_lr_fraction * t.lr_score, t.warmup_fraction))

    def _kl_weight(self, step: int) -> float:
        """NVAE's KL warm-up over the first `kl_warmup` fraction of the run, across stage 1 and the joint phase."""
        return kl_warmup_weight(step / self.t.steps, self.t.kl_warmup)

    # --- one step -------------------------------------------------------------------------------------
    def _condition_inputs(self, x: torch.Tensor, y: torch.Tensor | None) -> dict:
        """The score network's condition for a training batch, dropped at the condition's rate (for guidance)."""
        condition = self.model.condition
        if condition is None:
            return {}
        if condition.kind == "class":
            if y is None:
                raise ValueError("a class condition needs a labelled dataset")
            return condition.inputs(condition.drop(y))
        return condition.inputs(condition.drop((x, random_masks(x.shape[0], x.shape[-2:], device=x.device))))

    def _losses(self, phase: str, x: torch.Tensor, y: torch.Tensor | None, kl_weight: float):
        """(scalars to log, loss of the VAE's update or None, loss of the score model's update or None)."""
        t = self.t
        if phase == "joint":
            terms = joint_loss(self.model, x, kl_weight, t.scheme_p, t.scheme_q, self.cfg.sde.t_eps,
                               self._condition_inputs(x, y), t.get("noise_draws", 1))
            regulariser = (t.spectral_weight * self.vae.spectral_norm_loss() + t.norm_weight * self.vae.norm_loss())
            scalars = terms.scalars()
            scalars["train_bpd"] = scalars["nelbo"] / (math.log(2) * x[0].numel())
            return scalars, terms.loss_vae + regulariser, terms.loss_score
        scalars, loss_vae, z0 = {}, None, x
        if phase == "vae":
            terms = training_loss(self.vae, x, kl_weight, self.fit_config)
            loss_vae = terms["loss"]
            scalars = {"loss_vae": loss_vae.detach(), "train_bpd": terms["bpd"].detach().mean()}
            if t.mode == "vae" or not t.get("score_in_stage1"):
                return scalars, loss_vae, None
            # the score model learns the current VAE's (detached) latents alongside: the joint phase starts with a
            # fitted prior instead of an untrained network
            z0 = self.vae.pack(terms["eps"]).detach()
        elif phase == "disjoint":
            with torch.no_grad():
                z0 = self.model.encode(x)
        loss_score = score_loss(self.model, z0, t.scheme_p, self.cfg.sde.t_eps, self._condition_inputs(x, y)).mean()
        return {**scalars, "loss_score": loss_score.detach()}, loss_vae, loss_score

    def _clip(self, parameters, loss) -> torch.Tensor:
        """The gradients' total norm before clipping to `grad_clip` (0 without a loss)."""
        if loss is None:
            return torch.zeros((), device=self.device)
        limit = self.t.grad_clip if self.t.grad_clip else math.inf
        return torch.nn.utils.clip_grad_norm_(parameters, limit)

    @torch.no_grad()
    def drop_inactive_channels(self) -> dict:
        """LSGM's drop_inactive_var (`LSGM.drop_inactive`) on the stage-1 VAE's latents, with the KL per channel
        averaged over the first training images; its RNG draws do not touch the training streams."""
        x = self.data["train"].x[:ACTIVE_CHANNEL_IMAGES].to(self.device)
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.cfg.seed)
            self.model.eval()
            active = self.model.drop_inactive(x)
        count = int(active.sum())
        if self.context.is_main:
            print(f"drop_inactive_var: {count} of {active.numel()} latent channels active (KL ≥ 0.1 nat)")
        return {"active_channels": count}

    def _starts_score_prior(self, phase: str, step: int) -> bool:
        """Whether this step is the first of the joint (or disjoint) phase after a stage 1 of the VAE."""
        return phase in ("joint", "disjoint") and step == self.t.stage1_steps > 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        step = self.progress.step
        phase = self.phase(step)
        dropped = self.drop_inactive_channels() if self.t.get("drop_inactive_var") and \
            self._starts_score_prior(phase, step) else {}
        self._set_learning_rates(phase, step)
        kl_weight = self._kl_weight(step)
        self.model.train()
        amp = self.t.amp == "bf16" and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            scalars, loss_vae, loss_score = self._losses(phase, x, y, kl_weight)
        for optimizer in (self.vae_optimizer, self.score_optimizer):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
        if loss_vae is not None:
            loss_vae.backward(inputs=self.vae_parameters, retain_graph=loss_score is not None)
        if loss_score is not None:
            loss_score.backward(inputs=self.score_parameters)
        distributed.average_gradients(self.vae_parameters + self.score_parameters, self.context.world_size)
        grad_vae, grad_score = self._clip(self.vae_parameters, loss_vae), self._clip(self.score_parameters, loss_score)
        checked = [v.detach().float() for v in (loss_vae, loss_score) if v is not None] + [grad_vae, grad_score]
        finite = bool(torch.isfinite(torch.stack(checked)).all())  # the step's one device synchronisation
        if finite:
            if loss_vae is not None:
                self.vae_optimizer.step()
            if loss_score is not None:
                self.score_optimizer.step()
                self.ema.update()
        else:
            self.progress.skipped += 1
        self.progress.step += 1
        lrs = {"lr_score": self.score_optimizer.param_groups[0]["lr"]}
        if self.vae_optimizer is not None:
            lrs["lr_vae"] = self.vae_optimizer.param_groups[0]["lr"]
        mixing = self.model.mixing_coefficient()
        extra = {"mixing_alpha": mixing.detach().mean()} if mixing is not None else {}
        return {**scalars, **lrs, **extra, **dropped, "kl_weight": kl_weight, "grad_norm_vae": grad_vae,
                "grad_norm_score": grad_score, "skipped": self.progress.skipped, "phase": phase}

    # --- evaluation during training -------------------------------------------------------------------
    @torch.no_grad()
    def validation_bpd(self) -> float:
        """The bound on the validation split in bits/dim for the current phase, with a fixed seed:
        the VAE's ELBO (stage 1), or LSGM's −ELBO with the SGM prior's DSM cross-entropy averaged over
        `eval_repeats` draws of t (joint/disjoint), or the DSM cross-entropy of pixel models."""
        x = self.data["val"].x.to(self.device)
        phase = self.phase(self.progress.step - 1)
        with self.ema.applied(), torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.cfg.seed)
            self.model.eval()
            bpd = validation_bound(self.model, x, vae_only=phase == "vae", repeats=self.t.eval_repeats,
                                   scheme="ll_iw", t_eps=self.cfg.sde.t_eps)
        return bpd

    def _rng_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    @torch.no_grad()
    def write_samples(self, name: str) -> Path | None:
        with self.ema.applied(), torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.cfg.seed)
            self.model.eval()
            prior = "vae" if self.phase(self.progress.step - 1) == "vae" else None
            images, nfe = generate(self.model, self.t.num_samples, self.cfg.sampler, prior=prior)
        return self.logger.log_images(name, images, self.progress.step) if self.logger else None

    # --- the loop -------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True

    def fit(self) -> dict:
        """Train until `train.steps` (or a stop signal); returns the final record. Numbers stay on the device
        between logging steps (`log_every`), where they are read once."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        t = self.t
        bar = tqdm(total=t.steps, initial=self.progress.step, disable=not self.context.is_main, dynamic_ncols=True,
                   desc="train")
        running, start, first_step = None, time.time(), self.progress.step
        record: dict = {}
        try:
            while self.progress.step < t.steps and not self.stop_requested:
                phase_before = self.phase(self.progress.step)
                batch = next(self.stream)
                record = self.train_step(batch.x.contiguous(memory_format=self.memory_format), batch.y)
                step = self.progress.step
                loss = record.get("loss_vae", record.get("loss_score"))
                running = loss if running is None else torch.where(loss.isfinite(), 0.95 * running + 0.05 * loss,
                                                                   running)
                bar.update(1)
                if step % t.log_every == 0 or step == t.steps:
                    bar.set_postfix(phase=record["phase"], loss=f"{running.item():.4g}", skipped=self.progress.skipped)
                    if self.logger:
                        speed = (step - first_step) * t.batch_size / (time.time() - start)
                        numbers = {k: v for k, v in record.items() if k != "phase"}
                        self.logger.log({**numbers, "images_per_second": speed}, step)
                phase_ends = step == t.steps or self.phase(step) != phase_before
                if step % t.eval_every == 0 or phase_ends:
                    self._evaluate(phase_before, phase_ends)
                if self.logger and (step % t.sample_every == 0 or step == t.steps):
                    self.write_samples(f"samples_{record['phase']}")
                if step % t.checkpoint_every == 0 or step == t.steps:
                    self.save("last.pt")
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.stop_requested:
            self.save("last.pt")
            print(f"stopped by a signal at step {self.progress.step}; checkpoint: {self.checkpoint_dir / 'last.pt'}")
        return record

    def _evaluate(self, phase: str, phase_ends: bool) -> None:
        if not self.context.is_main:
            distributed.barrier(self.context)
            return
        bpd = self.validation_bpd()
        self.logger.log({"val_bpd": bpd}, self.progress.step)
        final_phase = phase == self.phase(self.t.steps - 1)
        if final_phase and bpd < self.progress.best_val:
            self.progress.best_val, self.progress.best_step = bpd, self.progress.step
            self.save("best.pt")
        distributed.barrier(self.context)

    # --- after training -------------------------------------------------------------------------------
    def final_evaluation(self) -> dict:
        """Test NLL (bits/dim ± standard error) and a sample grid from the best checkpoint (EMA weights)."""
        if not self.context.is_main:
            return {}
        final = plain(self.t.final_eval)
        best = self.checkpoint_dir / "best.pt"
        path = best if best.exists() else self.save("last.pt")
        model = load(path, self.device)
        x = self.data[final.get("split", "test")].x[: final.get("max_images")].to(self.device)
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.cfg.seed)
            result = test_nll(model, x, k=final.get("k", 1), batch_size=final.get("batch_size", 128),
                              **final.get("ode", {}))
            images, sample_nfe = generate(model, self.t.num_samples, self.cfg.sampler)
        grid = self.logger.log_images("final_samples", images, self.progress.step)
        summary = {"test_bpd": result.bpd, "test_bpd_stderr": result.bpd_stderr, "test_nll_nfe": result.nfe,
                   "sample_nfe": sample_nfe, "checkpoint": str(path), "best_step": self.progress.best_step,
                   "skipped_steps": self.progress.skipped, "samples": str(grid)}
        self.logger.log({"test_bpd": result.bpd, "test_bpd_stderr": result.bpd_stderr}, self.progress.step)
        self.logger.summary(summary)
        return summary

    def close(self) -> None:
        if self.logger is not None:
            self.logger.finish()
        distributed.teardown()
