"""ImageNet (ILSVRC-2012) ResNets: the paper's recipe, or a modern one.

    python -m resnet_jax.main --config=configs/imagenet.py --workdir=runs/rn50
    python -m resnet_jax.main --config=configs/imagenet.py:resnet34 --workdir=runs/rn34
    python -m resnet_jax.main --config=configs/imagenet.py:resnet50,modern --workdir=runs/rn50m

Variant argument: a model (`resnet18|34|50|101|152` or `plain18|34|...`; default resnet50) and
optionally `modern`.

Paper (Sec. 3.4): batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 when the
error plateaus (here at epochs 30, 60 and 90), 600k iterations (120 epochs at batch 256); scale
augmentation (shorter side in [256, 480], random 224 crop, flip; per-channel mean/std
normalisation, where the paper subtracts the per-pixel mean) and AlexNet colour lighting; BN after
every conv, its statistics over the whole batch (the paper's were per GPU); ResNet v1 (stride on
the bottleneck's 1x1); option B shortcuts. Single-model 10-crop top-1 error in the paper
(Table 3): ResNet-34 B 24.52%, ResNet-50 22.85%, ResNet-101 21.75%, ResNet-152 21.43%. The evals
during training are single centre crops (224 of 256), a point or two worse than 10 crops; the
paper's protocol on a trained run: the same command with `--mode=eval
--config.eval.protocol=ten_crop` (or `multi_scale`, the paper's fully-convolutional testing).

Modern: 90 epochs, 5 epochs of linear warmup then cosine, label smoothing 0.1, bfloat16 compute,
random-resized (inception) crop without colour lighting, weight decay 5e-5 and none on BN and
biases, zero-init of each block's last BN, Nesterov momentum, ResNet v1.5 (torchvision's
layout). torchvision reports 76.1% top-1 for
its v1.5 ResNet-50 with a plainer recipe.

Needs the ILSVRC-2012 tars prepared once as ArrayRecord (README, "Datasets from the tfds
catalog"): `tfds build imagenet2012 --data_dir=DIR --file_format=array_record --manual_dir=TARS`,
then `--config.data.data_dir=DIR`.
"""

from resnet_jax.recipes import imagenet_recipe


def get_config(arg: str | None = None):
  return imagenet_recipe(arg)
