"""CIFAR-10 with the paper's recipe (He et al. 2015, Sec. 4.2).

    python -m resnet_jax.main --config=configs/cifar10.py:resnet56 --workdir=runs/c10_r56
    python -m resnet_jax.main --config=configs/cifar10.py:plain20,holdout --workdir=runs/c10_p20

Variant argument: a model (`resnet20|32|44|56|110|1202`, or `plain20..1202` for the plain
baselines; default resnet20) and optionally `holdout` (train on 45k, evaluate on the held-out 5k:
the split on which the paper chose its schedule; its Table 6 and Fig. 6 train on all 50k and test
on the test set, as the default does). Recipe: batch 128, SGD momentum 0.9, weight decay 1e-4
(L2), lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k; 4-pixel pad, 32x32 random crop,
horizontal flip; per-pixel mean subtraction (here per-channel mean/std, and the padding black
before it, not the mean). Option A shortcuts. BN statistics over the whole batch of 128 (the
paper's two GPUs saw 64 each: `--config.model.bn_group_size=64`). The 110- and 1202-layer nets
(plain ones too) warm up at lr 0.01 for 400 iterations, which stands in for the paper's "until the
training error is below 80% (about 400 iterations)", stated for ResNet-110.
The paper reports test error 8.75% (ResNet-20), 7.51% (32), 7.17% (44), 6.97% (56), 6.43% (110),
7.93% (1202). Stochastic depth as Huang et al. (2016) set it (the last block kept with probability
0.5, linearly more often below) is `--config.model.drop_path_rate=0.5`; their runs also trained
longer than this recipe. Needs CIFAR-10 prepared once as ArrayRecord (README, "Datasets from the
tfds catalog"): `tfds build cifar10 --data_dir=DIR --file_format=array_record`, then
`--config.data.data_dir=DIR`.
"""

from resnet_jax.recipes import cifar10_recipe


def get_config(arg: str | None = None):
  return cifar10_recipe(arg)
