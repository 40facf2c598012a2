"""Your own images: a folder of class subfolders, prepared once, then trained on.

    python -m resnet_jax.data.prepare --image-folder ROOT --out data/fabric
    python -m resnet_jax.main --config=configs/image_folder.py --workdir=runs/fabric \
        --config.data.data_dir=data/fabric
    python -m resnet_jax.predict --workdir=runs/fabric new_photos/

ROOT holds `<class>/*.jpg|png` (prepare splits off a fraction of each class for validation), or
`train/<class>/...` beside a fixed `val/<class>/...`. The default is a ResNet-18 at 224x224 with
random-resized crops, flips in both directions (close-ups of fabric have no up or down) and a
warmup + cosine schedule; the variant argument picks the size: `:small` (`small_resnet` at 64x64,
for a first look in minutes on a CPU) or a model name (`:resnet34`, `:resnet50`, ...).
"""

from resnet_jax.config_base import base_config
from resnet_jax.models.registry import model_names


def get_config(arg: str | None = None):
  arg = arg or 'resnet18'
  if arg != 'small' and arg not in model_names():
    raise ValueError(f'configs/image_folder.py:{arg}: the variant is small or a model name '
                     f'({", ".join(model_names())})')
  c = base_config()
  c.data.source = 'folder'
  c.data.data_dir = ''   # set with --config.data.data_dir: the output of data.prepare
  c.data.eval_split = 'val'   # prepare names its held-out split 'val'
  c.data.augment = 'inception_crop'
  c.data.hflip = True
  c.data.vflip = True
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.num_workers = 8
  if arg == 'small':
    c.model.name = 'small_resnet'
    c.data.image_size = 64
    c.data.eval_resize = 72
    c.batch_size = 64
  else:
    c.model.name = arg
    c.data.image_size = 224
    c.data.eval_resize = 256
    c.batch_size = 128
  c.eval_batch_size = 128
  c.dtype = 'float32'
  c.num_steps = 0
  c.num_epochs = 30
  c.optimizer.lr = 0.1
  c.optimizer.lr_batch_size = 256
  c.optimizer.nesterov = True
  c.optimizer.decay_bn_and_bias = False
  c.label_smoothing = 0.1
  c.schedule.name = 'cosine'
  c.schedule.unit = 'epochs'
  c.schedule.warmup = 1
  c.log_every_steps = 20
  return c
