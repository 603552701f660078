"""The training loop: stage 1 (the VAE alone), then joint LSGM training (or the score model alone).

The model's kind (`lsgm.models`) says each step's phase and losses: an LSGM trains its VAE alone for
`stage1_steps` (phase "vae"), then jointly ("joint": the VAE on −ELBO with the SGM prior, the score model on its
DSM objective) or the score model alone on the frozen VAE's latents ("disjoint", LDM-style); a VAE alone is always
in "vae"; pixel models in "score". The VAE's parameters (named `vae.*`) and the score model's have each their
own optimizer, learning rate (warm-up + cosine) and gradient clipping. A step may run in `train.accumulate`
micro-batches, each with the noise of its own process (`distributed.NoiseStreams`). Every step is guarded: a
non-finite loss or gradient skips both updates and is counted. The score
model's weights are averaged (EMA) and evaluated with the average. A checkpoint holds everything
the next step depends on (weights, EMA, optimizers, step, data order, RNG states), so a resumed run
continues the same trajectory; SIGINT/SIGTERM save and stop at the end of the current step.
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.profiler import record_function

from nvae.train import FitConfig, fastest_optimizer, kl_warmup_weight, make_optimizer, set_lr, warmup_cosine_lr

from . import distributed
from .build import build_model, load, load_first_stage, load_splits, plain
from .checkpoint import CheckpointError, load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from .conditioning import random_masks
from .data import BatchStream
from .ema import EMA
from .evaluate import generate, test_nll, validation_bound
from .guard import TrainingDiverged, UpdateGuard, check_train_config, weights_healthy
from .log import RunLogger, drop_records_after
from .models import LossOptions
from .progress import progress_bar
from .run_lock import RunLock

log = logging.getLogger(__name__)  # hydra writes it to the console and to the run folder's train_joint.log
# SIGINT/SIGTERM (ctrl-C, torchrun, kill), and SIGUSR1, which SLURM/submitit send before a job's time limit
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
PRIOR_IMAGES = 4096  # training images a model's `prepare_prior` sees (LSGM: KL per channel; LDM: the latent scale)
FIRST_STAGE = ("vae.", "autoencoder.")  # the first stage's parameters: an LSGM's VAE, an LDM's autoencoder
DISCRIMINATOR = "first_stage_loss.discriminator."  # an LDM's discriminator


def git_commit() -> str | None:
    """The commit of the source tree lsgm runs from (with "+dirty" for uncommitted changes), None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def compile_networks(model: torch.nn.Module) -> None:
    """torch.compile the forward of the score network and of the VAE in place (`nn.Module.compile`: the state
    dict keeps its names, so checkpoints load either way)."""
    for name in ("score_net", "vae"):
        network = getattr(model, name, None)
        if network is not None:
            network.compile()


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """A nested config as {"a.b.c": value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class Progress:
    step: int = 0
    skipped: int = 0  # updates skipped (non-finite) or undone (too large), VAE's and score model's counted apart
    skipped_in_a_row: int = 0  # steps in a row in which some update was skipped or undone
    loss_scale: dict = field(default_factory=dict)  # running mean of each part's kept losses (the spike guard's)
    best_val: float = math.inf
    best_step: int = -1


class Trainer:
    """Trains the model of `cfg` (the root config) in `run_dir`."""

    def __init__(self, cfg, run_dir: str | Path):
        self.cfg, self.train_cfg = cfg, cfg.train
        check_train_config(self.train_cfg)
        self.run_dir = Path(run_dir)
        self.context = distributed.setup(cfg.device)
        self.lock = RunLock(self.run_dir).acquire() if self.context.is_main else None
        try:
            self._setup(cfg)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg) -> None:
        """Everything after the lock: data, model, optimizers; then the resume, validated before the run folder's
        record and logs are written."""
        self.logger = None
        if cfg.get("threads"):
            torch.set_num_threads(cfg.threads)
        self.device = self.context.device
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank (and rank 0's broadcast makes sure)
        self.data = load_splits(cfg.data)
        train = self.data["train"]
        self.model = build_model(cfg, train.shape, train.levels, train.num_classes).to(self.device)
        distributed.broadcast_module(self.model, self.context)
        torch.manual_seed(cfg.seed + self.context.rank)  # ranks differ in their noise draws and data shards only
        self.memory_format = torch.channels_last if self.train_cfg.get("channels_last") else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if self.train_cfg.get("compile"):
            compile_networks(self.model)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]  # frozen: perceptual nets
        self.vae_parameters = [p for n, p in named if n.startswith(FIRST_STAGE)]
        self.disc_parameters = [p for n, p in named if n.startswith(DISCRIMINATOR)]
        score_named = [(n, p) for n, p in named if not n.startswith((*FIRST_STAGE, DISCRIMINATOR))]
        self.score_parameters = [p for _, p in score_named]
        betas = tuple(self.train_cfg.get("betas_vae") or (0.9, 0.999))
        self.fit_config = FitConfig(optimizer=self.train_cfg.optimizer_vae, lr=self.train_cfg.lr_vae,
                                    weight_decay=self.train_cfg.weight_decay_vae, kl_balance=self.train_cfg.kl_balance,
                                    spectral_weight=self.train_cfg.spectral_weight,
                                    norm_weight=self.train_cfg.norm_weight, betas=betas)
        self.vae_optimizer = make_optimizer(self.vae_parameters, self.fit_config) if self.vae_parameters else None
        self.disc_optimizer = fastest_optimizer(torch.optim.Adam, self.disc_parameters, lr=self.lr_disc,
                                                betas=betas) if self.disc_parameters else None
        self.score_optimizer = fastest_optimizer(torch.optim.AdamW, self._score_groups(score_named),
                                                 lr=self.train_cfg.lr_score,
                                                 weight_decay=self.train_cfg.weight_decay_score) \
            if self.score_parameters else None
        # one guard a run per optimizer: it carries a bound of the weights' norm from step to step
        self.guards = {optimizer: UpdateGuard(parameters, self.train_cfg.get("max_update_ratio"), optimizer)
                       for parameters, optimizer in ((self.vae_parameters, self.vae_optimizer),
                                                     (self.disc_parameters, self.disc_optimizer),
                                                     (self.score_parameters, self.score_optimizer))
                       if optimizer is not None}
        self.ema = EMA(score_named, self.train_cfg.ema_decay)
        world, self.micro_batches = self.context.world_size, self.train_cfg.get("accumulate", 1)
        if self.train_cfg.batch_size % (world * self.micro_batches):
            raise ValueError(f"train.batch_size ({self.train_cfg.batch_size}) must be divisible by the {world} "
                             f"process(es) × train.accumulate ({self.micro_batches}) micro-batches")
        self.noise = distributed.NoiseStreams(cfg.seed, self.micro_batches, self.context)
        self.stream = BatchStream(train.to(self.device), self.train_cfg.batch_size // world, seed=cfg.seed,
                                  rank=self.context.rank, world_size=world)
        self.progress = Progress()
        if self.train_cfg.get("first_stage") and self.train_cfg.resume is None:
            load_first_stage(self.model, self.train_cfg.first_stage)
            distributed.broadcast_module(self.model, self.context)
        self.stop_requested = False
        self.wandb_id = None  # the wandb run this training run logs to (kept in checkpoints, continued on resume)
        resumed = self._resume()
        if self.context.is_main:
            self._record_config(resumed)
            drop_records_after(self.run_dir / "metrics.jsonl", self.progress.step)  # a crash's records past it
            self.logger = self._make_logger()
            self._announce()

    def _announce(self) -> None:
        """The run's folder, device, model and parameter counts, and where wandb writes, before the first step."""
        count = lambda parameters: sum(p.numel() for p in parameters)  # noqa: E731
        wandb_dir = self.run_dir / "wandb" if self.logger.wandb_run is not None else "off"
        disc = f", discriminator {count(self.disc_parameters):,}" if self.disc_parameters else ""
        log.info(f"run folder {self.run_dir}; device {self.device} × {self.context.world_size} process(es); "
                 f"model {self.model.kind}: first stage {count(self.vae_parameters):,}{disc} and score model "
                 f"{count(self.score_parameters):,} parameters; wandb {wandb_dir}")

    # --- setup ------------------------------------------------------------------------------------
    def _score_groups(self, score_named: list) -> list[dict]:
        """The score model's parameter groups: the mixing logits apart, at `lr_mixing` (a multiple of lr_score's
        schedule) and without weight decay. Adam moves a parameter by at most about its rate per step, so at
        lr_score a logit could move by only ~lr·steps (0.6 over 1000 steps): α would stay where it started."""
        lr_mixing = self.train_cfg.get("lr_mixing")
        mixing = [p for n, p in score_named if n == "mixing_logit"]
        rest = [p for n, p in score_named if n != "mixing_logit"]
        if not mixing or lr_mixing is None:
            return [{"params": mixing + rest, "lr_scale": 1.0}]
        return [{"params": rest, "lr_scale": 1.0},
                {"params": mixing, "lr_scale": lr_mixing / self.train_cfg.lr_score, "weight_decay": 0.0}]

    def _make_logger(self) -> RunLogger:
        """The run's logger: a resumed run continues the wandb run its checkpoint names."""
        log = plain(self.cfg.logger)
        config = {**OmegaConf.to_container(self.cfg, resolve=True), "git_commit": git_commit()}
        return RunLogger(self.run_dir, mode=log.get("mode", "offline"), project=log.get("project", "lsgm"),
                         name=log.get("name") or self.run_dir.name, group=log.get("group"),
                         tags=log.get("tags") or (), notes=log.get("notes"), entity=log.get("entity"),
                         config=config, system_metrics=bool(log.get("system_metrics")), job_type="train",
                         run_id=self.wandb_id)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _record_config(self, resumed: bool) -> None:
        """config.yaml records the run's config when it starts. A resumed run whose config differs keeps that record,
        says which keys changed, and appends its own as config.resumed-<step>.yaml."""
        text = OmegaConf.to_yaml(self.cfg, resolve=True)
        record = self.run_dir / "config.yaml"
        if not (resumed and record.exists()):
            record.write_text(text)
            return
        before = OmegaConf.to_container(OmegaConf.create(record.read_text()))
        now = OmegaConf.to_container(OmegaConf.create(text))
        changed = sorted(key for key in set(flat_keys(before)) | set(flat_keys(now))
                         if flat_keys(before).get(key) != flat_keys(now).get(key))
        if changed:
            appended = self.run_dir / f"config.resumed-{self.progress.step}.yaml"
            appended.write_text(text)
            log.warning(f"resuming with a config that differs from config.yaml in {', '.join(changed)}; "
                  f"config.yaml is kept and this run's config is recorded in {appended.name}")

    def _resume(self) -> bool:
        """Load the checkpoint to resume from, if any (train.resume, or the run folder's checkpoints/last.pt); a
        checkpoint that does not fit this config raises before anything in the folder is written."""
        path = self.train_cfg.resume or (self.checkpoint_dir / "last.pt" if (self.checkpoint_dir / "last.pt").exists()
                                 else None)
        if path is None:
            return False
        state = load_checkpoint(path, map_location=self.device)
        world = self.context.world_size
        if state.get("world_size", 1) != world:
            raise CheckpointError(f"{path} was written by a run of {state.get('world_size', 1)} processes and this "
                                  f"one has {world}: their data shards differ; resume with torchrun "
                                  f"--nproc_per_node={state.get('world_size', 1)}, or start a new run folder")
        load_model_state(self.model, state["model"], path)
        self.ema.load_state_dict(state["ema"])
        if self.vae_optimizer is not None:
            self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        if self.score_optimizer is not None:
            self.score_optimizer.load_state_dict(state["score_optimizer"])
        if self.disc_optimizer is not None:
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.stream.load_state_dict(state["data"])
        self.progress = Progress(**state["progress"])
        self.wandb_id = state.get("wandb_id")
        set_rng_state(state["rng"])  # rank 0's; the other ranks draw their own noise, seeded by rank and step
        if self.context.rank:
            torch.manual_seed(self.cfg.seed + 1_000_003 * self.progress.step + self.context.rank)
            self.noise = distributed.NoiseStreams(self.cfg.seed + 1_000_003 * self.progress.step,
                                                  self.micro_batches, self.context)
        else:
            self._load_noise_streams(state.get("noise_streams") or [], path)
        if self.context.is_main:
            log.info(f"resumed from {path} at step {self.progress.step}")
        return True

    def _load_noise_streams(self, states: list, path: Path) -> None:
        """Rank 0's micro-batch streams from a checkpoint (none when it was written with one micro-batch a step)."""
        saved = max(len(states), 1)
        if saved != self.micro_batches:
            raise CheckpointError(f"{path} was written with train.accumulate={saved} and this run has "
                                  f"{self.micro_batches}: their noise streams differ; resume with "
                                  f"train.accumulate={saved}, or start a new run folder")
        if states:
            self.noise.load_state_dict(states)

    def state(self) -> dict:
        train = self.data["train"]
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "data_shape": tuple(train.shape), "levels": train.levels, "num_classes": train.num_classes,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict() if self.vae_optimizer is not None else None,
            "score_optimizer": self.score_optimizer.state_dict() if self.score_optimizer is not None else None,
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer is not None else None,
            "data": self.stream.state_dict(), "progress": vars(self.progress).copy(), "rng": rng_state(),
            "noise_streams": self.noise.state_dict(),
            "step": self.progress.step, "world_size": self.context.world_size,
            "wandb_id": self.logger.run_id if self.logger is not None else self.wandb_id,
        }

    def save(self, name: str) -> Path:
        """Write checkpoints/<name> from healthy weights only (`lsgm.guard.weights_healthy`): a run whose weights
        blew up stops instead of overwriting its last good checkpoint."""
        path = self.checkpoint_dir / name
        if self.context.is_main:
            healthy, largest = weights_healthy(self.vae_parameters + self.disc_parameters + self.score_parameters,
                                               self.max_weight)
            if not healthy:
                raise TrainingDiverged(f"not writing {path} at step {self.progress.step}: the largest weight is "
                                       f"{largest:.4g} (limit train.max_weight = {self.max_weight:g}); the last good "
                                       f"checkpoint is kept; lower the learning rates (train.lr_vae, train.lr_score)")
            save_checkpoint(path, self.state())
        return path

    @property
    def lr_disc(self) -> float:
        """The discriminator's rate (`train.lr_disc`; null: the first stage's)."""
        return self.train_cfg.get("lr_disc") or self.train_cfg.lr_vae

    @property
    def max_weight(self) -> float:
        return float(self.train_cfg.get("max_weight") or math.inf)

    # --- phases and schedules -------------------------------------------------------------------------
    def phase(self, step: int) -> str:
        """The model's training phase at `step` (`lsgm.models`)."""
        return self.model.phase(step, self.train_cfg)

    def _progress(self, step: int, start: int) -> float:
        """Progress p ∈ [0, 1) of a schedule that runs from step `start` to the end of the run."""
        return max(step - start, 0) / max(self.train_cfg.steps - start, 1)

    def score_progress(self, step: int) -> float:
        """Progress of the score model's training: the phase after stage 1, or the whole run when the score model
        also learns during stage 1 (`score_in_stage1`)."""
        stage1 = 0 if self.train_cfg.get("score_in_stage1") else self.train_cfg.stage1_steps
        return self._progress(step, stage1)

    def first_stage_steps(self) -> int:
        """The steps the first stage trains for: the whole run when it trains in the last phase (a VAE alone, joint
        LSGM), else stage 1 (an LDM's autoencoder, LSGM's disjoint mode)."""
        last_phase = self.phase(self.train_cfg.steps - 1)
        return self.train_cfg.steps if last_phase in ("vae", "joint") else self.train_cfg.stage1_steps

    def _set_learning_rates(self, phase: str, step: int) -> None:
        """Warm-up + cosine: the first stage's (and a discriminator's) over the steps it trains
        (`first_stage_steps`; or restarted at `lr_vae_joint` for the joint phase, LSGM's recipe after a long stage 1),
        the score model's over its own training (`score_progress`)."""
        train = self.train_cfg
        first_stage_p = step / max(self.first_stage_steps(), 1)
        if self.vae_optimizer is not None:
            restart = phase == "joint" and train.get("lr_vae_joint")
            lr, p = ((train.lr_vae_joint, self._progress(step, train.stage1_steps)) if restart
                     else (train.lr_vae, first_stage_p))
            set_lr(self.vae_optimizer, warmup_cosine_lr(p, lr, train.min_lr_fraction * lr, train.warmup_fraction))
        if self.disc_optimizer is not None:
            set_lr(self.disc_optimizer, warmup_cosine_lr(first_stage_p, self.lr_disc,
                                                         train.min_lr_fraction * self.lr_disc, train.warmup_fraction))
        if self.score_optimizer is not None:
            lr_score = warmup_cosine_lr(self.score_progress(step), train.lr_score,
                                        train.min_lr_fraction * train.lr_score, train.warmup_fraction)
            for group in self.score_optimizer.param_groups:
                group["lr"] = lr_score * group["lr_scale"]

    def _kl_weight(self, step: int) -> float:
        """NVAE's KL warm-up over the first `kl_warmup` fraction of the run, across stage 1 and the joint phase."""
        return kl_warmup_weight(step / self.train_cfg.steps, self.train_cfg.kl_warmup)

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

    def loss_options(self, x: torch.Tensor, y: torch.Tensor | None, kl_weight: float, step: int = 0) -> LossOptions:
        """What `model.losses` needs besides the batch: the run's schemes and weights, the (dropped) condition."""
        train = self.train_cfg
        return LossOptions(kl_weight=kl_weight, scheme_p=train.scheme_p, scheme_q=train.scheme_q,
                           t_eps=self.cfg.sde.t_eps, draws=train.get("noise_draws", 1),
                           score_target=train.get("score_target", "noise"),
                           inputs=self._condition_inputs(x, y), fit=self.fit_config,
                           score_in_stage1=bool(train.get("score_in_stage1")), step=step)

    def _loss_spike(self, name: str, value: float) -> bool:
        """Whether a finite loss lies above `train.max_loss_ratio` times the running mean of its kept steps (a spike
        whose update is skipped like a non-finite one; None: no check)."""
        ratio, scale = self.train_cfg.get("max_loss_ratio"), self.progress.loss_scale.get(name)
        return ratio is not None and bool(scale) and math.isfinite(value) and value > ratio * abs(scale)

    def _update(self, name: str, finite: bool, value: float, norm: float, parameters, optimizer) -> bool:
        """One part's update, each part apart: skipped for a non-finite loss or gradient or a loss spike, else its
        gradients clipped and its guarded optimizer step; whether it was kept."""
        if not finite or self._loss_spike(name, value):
            return False
        self._clip(parameters, norm)
        return self._guarded_step(optimizer)

    def _guarded_step(self, optimizer) -> bool:
        """optimizer.step(), undone when it moved the parameters by more than `train.max_update_ratio` of their norm
        (`lsgm.guard.UpdateGuard`); whether the step was kept."""
        with self.guards[optimizer] as guard:
            optimizer.step()
            if guard.exceeded():
                guard.undo()
                return False
        return True

    def _grad_norm(self, parameters, loss) -> torch.Tensor:
        """The gradients' total norm ‖g‖ (0-d, on the device; 0 without a loss)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if loss is None or not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    @torch.no_grad()
    def _clip(self, parameters, norm: float) -> None:
        """Scale the gradients by grad_clip/(‖g‖ + 1e-6) where ‖g‖ (read at the step's host synchronisation) exceeds
        `grad_clip`: torch's clip_grad_norm_, without its multiply by 1 of every gradient when within the limit
        (a pass over the weights' size: 1.8 of 4.3 ms of the digits stage-1 step's clipping)."""
        limit = self.train_cfg.grad_clip
        if limit and norm > limit:
            torch._foreach_mul_([p.grad for p in parameters if p.grad is not None], limit / (norm + 1e-6))

    @torch.no_grad()
    def prepare_prior(self) -> dict:
        """The model's `prepare_prior` (LSGM: drop_inactive_var; LDM: its latent scale) on the first training images,
        in eval mode; its RNG draws do not touch the training streams."""
        x = self.data["train"].x[:PRIOR_IMAGES].to(self.device)
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.cfg.seed)
            self.model.eval()
            numbers = self.model.prepare_prior(x, self.train_cfg)
        if numbers and self.context.is_main:
            log.info("the score model's phase starts: " + ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
        return numbers

    def _starts_score_prior(self, phase: str, step: int) -> bool:
        """Whether this step is the first of the score model's phase (after a stage 1, or the run's first step)."""
        return phase in ("joint", "disjoint", "score") and step == self.train_cfg.stage1_steps

    def _backward(self, phase: str, x: torch.Tensor, y: torch.Tensor | None, kl_weight: float,
                  step: int) -> tuple[dict, dict, dict]:
        """The step's forward and backward passes over its `train.accumulate` micro-batches (A): micro-batch i is
        x[i::A] (the examples rank r + W·i of W·A processes would take), drawing its noise from stream i
        (`distributed.NoiseStreams`); each part's gradient accumulates its loss / A (its own parameters only: the VAE's
        loss shares the score model's graph in a joint step). Returns the scalars to log, each part's loss and the
        value its spike guard tracks (means over the micro-batches, detached)."""
        count = self.micro_batches
        scalars, losses, tracked = {}, {}, {}
        self.model.train()
        amp = self.train_cfg.amp == "bf16"  # bf16 autocast on CUDA and CPU alike; the weights stay float32
        for index in range(count):
            x_part, y_part = x[index::count], None if y is None else y[index::count]
            options = self.loss_options(x_part, y_part, kl_weight, step)
            options.regularisers = count if index == 0 else 0.0  # the weights' regularisers count once a step
            with self.noise.drawing(index), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp), \
                    record_function("step.forward"):
                part = self.model.losses(phase, x_part, options)
            named = {"vae": part.loss_vae, "disc": part.loss_disc, "score": part.loss_score}
            if part.loss_vae is not None:
                with record_function("step.backward.vae"):
                    (part.loss_vae / count).backward(inputs=self.vae_parameters,
                                                     retain_graph=part.loss_score is not None)
            for name, parameters in (("disc", self.disc_parameters), ("score", self.score_parameters)):
                if named[name] is not None:
                    with record_function(f"step.backward.{name}"):
                        (named[name] / count).backward(inputs=parameters)
            for name, loss in named.items():
                if loss is not None:
                    value = part.spike_values.get(name, loss)
                    losses[name] = losses.get(name, 0.0) + loss.detach() / count
                    tracked[name] = None if value is None else tracked.get(name, 0.0) + value.detach() / count
            for name, value in part.scalars.items():
                scalars[name] = scalars.get(name, 0.0) + value / count
        return scalars, losses, tracked

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        step = self.progress.step
        phase = self.phase(step)
        prepared = self.prepare_prior() if self._starts_score_prior(phase, step) else {}
        self._set_learning_rates(phase, step)
        kl_weight = self._kl_weight(step)
        for optimizer in (self.vae_optimizer, self.disc_optimizer, self.score_optimizer):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
        scalars, losses, tracked = self._backward(phase, x, y, kl_weight, step)
        candidates = (("vae", losses.get("vae"), self.vae_parameters, self.vae_optimizer),
                      ("disc", losses.get("disc"), self.disc_parameters, self.disc_optimizer),
                      ("score", losses.get("score"), self.score_parameters, self.score_optimizer))
        distributed.average_gradients(self.vae_parameters + self.disc_parameters + self.score_parameters,
                                      self.context.world_size)
        with record_function("step.clip"):
            grads = {name: self._grad_norm(parameters, loss) for name, loss, parameters, _ in candidates}
        parts = [(name, loss, grads[name], parameters, optimizer) for name, loss, parameters, optimizer in candidates
                 if loss is not None]
        # one device synchronisation (and one all-reduce across ranks, so that every rank decides alike): per part,
        # whether its loss on every rank and its gradient norm are finite, the mean over ranks of the value its
        # spike guard tracks (the loss itself unless the model names another, e.g. an LDM's reconstruction term;
        # NaN: none), and its gradient norm (the gradients being averaged already, alike on every rank)
        checks = distributed.mean_over_ranks(torch.stack([
            torch.stack([(torch.isfinite(loss) & torch.isfinite(grad)).float(),
                         torch.full((), math.nan, device=self.device) if tracked[name] is None
                         else tracked[name].float(), grad.float()])
            for name, loss, grad, _, _ in parts]), self.context).tolist()
        with record_function("step.update"):  # the checks' host synchronisation, clipping, the guarded steps
            kept = [self._update(name, finite == 1.0, value, norm, parameters, optimizer)
                    for (name, _, _, parameters, optimizer), (finite, value, norm) in zip(parts, checks)]
        for (name, *_), (_, value, _), ok in zip(parts, checks, kept):
            if ok and math.isfinite(value):
                scale = self.progress.loss_scale.get(name)
                self.progress.loss_scale[name] = value if scale is None else 0.9 * scale + 0.1 * value
        if losses.get("score") is not None and kept[-1]:
            with record_function("step.ema"):
                self.ema.update()
        skipped = kept.count(False)
        self.progress.skipped += skipped
        self.progress.skipped_in_a_row = self.progress.skipped_in_a_row + 1 if skipped else 0
        limit = self.train_cfg.get("max_skipped_steps") or math.inf
        if self.progress.skipped_in_a_row >= limit:
            raise TrainingDiverged(
                f"training diverged: {self.progress.skipped_in_a_row} steps in a row up to step {step + 1} had a "
                f"non-finite loss or gradient, a loss above train.max_loss_ratio of its running mean, or an update "
                f"larger than train.max_update_ratio of the weights; "
                f"lower the learning rates (train.lr_vae, train.lr_score) and resume from the last checkpoint")
        self.progress.step += 1
        lrs = {f"lr_{name}": optimizer.param_groups[0]["lr"] for name, _, _, optimizer in candidates
               if optimizer is not None}
        grad_norms = {f"grad_norm_{name}": grads[name] for name, _, parameters, _ in candidates if parameters}
        return {**scalars, **lrs, **self.model.monitored(), **prepared, "kl_weight": kl_weight, **grad_norms,
                "skipped": self.progress.skipped, "phase": phase}

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
            bpd = validation_bound(self.model, x, phase, repeats=self.train_cfg.eval_repeats,
                                   t_eps=self.cfg.sde.t_eps)
        return bpd

    def _rng_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    @torch.no_grad()
    def write_samples(self, name: str) -> Path | None:
        with self.ema.applied(), torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.cfg.seed)
            self.model.eval()
            prior = "vae" if self.phase(self.progress.step - 1) == "vae" else None
            images, nfe = generate(self.model, self.train_cfg.num_samples, self.cfg.sampler, prior=prior)
        return self.logger.log_images(name, images, self.progress.step) if self.logger else None

    # --- the loop -------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True
        self.stop_signal = signum

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop (all ranks then stop after the same step; one rank saves)."""
        self.stop_requested = distributed.any_rank(self.stop_requested, self.context)
        return self.stop_requested

    def fit(self) -> dict:
        """Train until `train.steps` (or a stop signal); returns the final record. Numbers stay on the device
        between logging steps (`log_every`), where they are read once."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        train = self.train_cfg
        bar = progress_bar(self.context.is_main, total=train.steps, initial=self.progress.step, desc="train")
        running, start, first_step = None, time.time(), self.progress.step
        record: dict = {}
        try:
            while self.progress.step < train.steps and not self._stop_agreed():
                phase_before = self.phase(self.progress.step)
                batch = next(self.stream)
                record = self.train_step(batch.x.contiguous(memory_format=self.memory_format), batch.y)
                step = self.progress.step
                loss = record.get("loss_vae", record.get("loss_score"))
                running = loss if running is None else torch.where(loss.isfinite(), 0.95 * running + 0.05 * loss,
                                                                   running)
                bar.update(1)
                if step % train.log_every == 0 or step == train.steps:
                    bar.set_postfix(phase=record["phase"], loss=f"{running.item():.4g}", skipped=self.progress.skipped)
                    if self.logger:
                        speed = (step - first_step) * train.batch_size / (time.time() - start)
                        numbers = {f"train/{k}": v for k, v in record.items() if k != "phase"}
                        self.logger.log({**numbers, "train/images_per_second": speed}, step)
                phase_ends = step == train.steps or self.phase(step) != phase_before
                if step % train.eval_every == 0 or phase_ends:
                    self._evaluate(phase_before, phase_ends)
                if self.logger and (step % train.sample_every == 0 or step == train.steps):
                    self.write_samples(f"samples_{record['phase']}")
                if step % train.checkpoint_every == 0 or step == train.steps:
                    self.save("last.pt")
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.stop_requested:
            self.save("last.pt")
            log.info(f"stopped by a signal at step {self.progress.step}; checkpoint: {self.checkpoint_dir / 'last.pt'}")
            handler = previous.get(getattr(self, "stop_signal", None))
            if callable(handler):  # e.g. submitit's SIGUSR1 handler, which requeues the job to resume from last.pt
                handler(self.stop_signal, None)
        return record

    def _evaluate(self, phase: str, phase_ends: bool) -> None:
        if not self.context.is_main:
            distributed.barrier(self.context)
            return
        bpd = self.validation_bpd()
        self.logger.log({"val/bpd": bpd}, self.progress.step)
        if not math.isfinite(bpd):
            raise TrainingDiverged(f"the validation bound is {bpd} at step {self.progress.step}: no checkpoint is "
                                   "written from this state; lower the learning rates and resume from the last one")
        final_phase = phase == self.phase(self.train_cfg.steps - 1)
        if final_phase and bpd < self.progress.best_val:
            self.progress.best_val, self.progress.best_step = bpd, self.progress.step
            self.save("best.pt")
        distributed.barrier(self.context)

    # --- after training -------------------------------------------------------------------------------
    def final_evaluation(self) -> dict:
        """Test NLL (bits/dim ± standard error) and a sample grid from the best checkpoint (EMA weights)."""
        if not self.context.is_main:
            return {}
        final = plain(self.train_cfg.final_eval)
        best = self.checkpoint_dir / "best.pt"
        path = best if best.exists() else self.save("last.pt")
        model = load(path, self.device)
        x = self.data[final.get("split", "test")].x[: final.get("max_images")].to(self.device)
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.cfg.seed)
            if model.has_likelihood:
                result = test_nll(model, x, k=final.get("k", 1), batch_size=final.get("batch_size", 128),
                                  **final.get("ode", {}))
                numbers = {"test_bpd": result.bpd, "test_bpd_stderr": result.bpd_stderr, "test_nll_nfe": result.nfe}
            else:  # no likelihood (an LDM): the reconstruction error of the test images
                rmse = torch.cat([model.reconstruction_error(batch) for batch in x.split(512)])
                numbers = {"test_rmse": rmse.mean().item(), "test_rmse_stderr": (rmse.std() / len(rmse) ** 0.5).item()}
            images, sample_nfe = generate(model, self.train_cfg.num_samples, self.cfg.sampler)
        grid = self.logger.log_images("final_samples", images, self.progress.step)
        summary = {**numbers, "sample_nfe": sample_nfe, "checkpoint": str(path), "best_step": self.progress.best_step,
                   "skipped_steps": self.progress.skipped, "samples": str(grid),
                   "best_val_bpd": self.progress.best_val}
        self.logger.log({f"test/{name[len('test_'):]}": value for name, value in numbers.items()
                         if name.startswith("test_") and not name.endswith("nfe")}, self.progress.step)
        self.logger.log_artifact(path, f"{self.run_dir.name}-best")
        self.logger.summary(summary)
        return summary

    def close(self) -> None:
        """Finish the logger, leave the process group, and release the run folder."""
        if getattr(self, "logger", None) is not None:
            self.logger.finish()
        distributed.teardown()
        if self.lock is not None:
            self.lock.release()
