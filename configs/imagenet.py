"""ImageNet (ILSVRC-2012) ResNets: the paper's recipe, or a modern one.

    python -m resnet_jax.main --config=configs/imagenet.py --workdir=runs/rn50
    python -m resnet_jax.main --config=configs/imagenet.py:resnet34 --workdir=runs/rn34
    python -m resnet_jax.main --config=configs/imagenet.py:resnet50,modern --workdir=runs/rn50m

Variant argument: a model (`resnet18|34|50|101|152` or `plain18|34|...`; default resnet50) and
optionally `modern`.

Paper (Sec. 3.4): batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 when the
error plateaus (here at epochs 30, 60 and 90), 600k iterations (120 epochs at batch 256); scale
augmentation (shorter side in [256, 480], random 224 crop, flip, per-channel normalisation) and
AlexNet colour lighting; BN after every conv; ResNet v1 (stride on the bottleneck's 1x1); option B
shortcuts. Single-model 10-crop top-1 error in the paper (Table 3): ResNet-34 B 24.52%,
ResNet-50 22.85%, ResNet-101 21.75%, ResNet-152 21.43%.

Modern: 90 epochs, 5 epochs of linear warmup then cosine, label smoothing 0.1, bfloat16 compute,
random-resized (inception) crop, no weight decay on BN and biases, zero-init of each block's last
BN, Nesterov momentum, ResNet v1.5 (torchvision's layout). torchvision reports 76.1% top-1 for
its v1.5 ResNet-50 with a plainer recipe.

Needs the ILSVRC-2012 tars prepared with tfds (extra `prepare`; see the README); set
`--config.data.data_dir` where they are.
"""

from resnet_jax.config_base import base_config, parse_variant

VARIANTS = [f'{k}{d}' for k in ('resnet', 'plain') for d in (18, 34, 50, 101, 152)]


def get_config(arg: str | None = None):
  name, flags = parse_variant(arg, VARIANTS, 'resnet50', flags=('modern',))
  modern = 'modern' in flags
  c = base_config()
  c.model.name = name
  c.model.shortcut = 'B'
  c.model.variant = 'v1.5' if modern else 'v1'
  c.model.zero_init_residual = modern
  c.data.source = 'tfds'
  c.data.name = 'imagenet2012'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.image_size = 224
  c.data.eval_resize = 256
  c.data.augment = 'inception_crop' if modern else 'imagenet_scale'
  c.data.scale_range = (256, 480)
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.pca_lighting = 0.0 if modern else 0.1
  c.data.num_workers = 16
  c.data.prefetch = 2
  c.batch_size = 256
  c.eval_batch_size = 250
  c.num_steps = 0
  c.num_epochs = 90 if modern else 120
  c.dtype = 'bfloat16' if modern else 'float32'
  c.optimizer.lr = 0.1
  c.optimizer.lr_batch_size = 256
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = modern
  c.optimizer.weight_decay = 5e-5 if modern else 1e-4
  c.optimizer.decay_bn_and_bias = not modern
  c.label_smoothing = 0.1 if modern else 0.0
  c.schedule.unit = 'epochs'
  if modern:
    c.schedule.name = 'cosine'
    c.schedule.warmup = 5
  else:
    c.schedule.name = 'multistep'
    c.schedule.boundaries = (30, 60, 90)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.eval.scales = (224, 256, 384, 480, 640)
  return c
