"""Train from a clone: `python train_joint.py [hydra overrides]`, the same hydra app as the installed `lsgm-train`
(lsgm.train_app, whose docstring lists the presets, the run folder and the exit codes).

    python train_joint.py                                  # digits, CPU, a few minutes
    python train_joint.py debug=default                    # a smoke run in well under a minute
    python train_joint.py -m train.lr_score=1e-4,3e-4      # a sweep: one run folder each, one wandb group
    torchrun --nproc_per_node=4 train_joint.py experiment=cifar10 data.root=/data/cifar10
"""

from lsgm.train_app import main

if __name__ == "__main__":
    main()
