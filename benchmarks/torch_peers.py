"""PyTorch peers for docs/benchmarks.md, timed the way resnet_jax.benchmark times itself.

    python benchmarks/torch_peers.py --model resnet50 --mode compile --batch 256
    python benchmarks/torch_peers.py --model cifar_resnet56 --mode eager --batch 128

torchvision's ResNet-50 (v1.5) or a CIFAR ResNet-56 with option-A shortcuts written the
torchvision way; channels_last, bf16 autocast, SGD momentum 0.9 with weight decay, label smoothing
0.1; synthetic data already on the GPU. Prints one JSON line. Needs torch (and torchvision for
ResNet-50); never imported by resnet_jax itself.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class OptionA(nn.Module):
  """Parameter-free shortcut: subsample by the stride and zero-pad the new channels."""

  def __init__(self, stride: int, extra: int):
    super().__init__()
    self.stride, self.extra = stride, extra

  def forward(self, x):
    x = x[:, :, ::self.stride, ::self.stride]
    return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = OptionA(stride, cout - cin) if (stride != 1 or cin != cout) else nn.Identity()

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def cifar_resnet(depth: int, num_classes: int = 10) -> nn.Module:
  n = (depth - 2) // 6
  layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
  cin = 16
  for stage, width in enumerate((16, 32, 64)):
    for i in range(n):
      layers.append(BasicBlock(cin, width, 2 if (stage > 0 and i == 0) else 1))
      cin = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
  return nn.Sequential(*layers)


def build(model: str) -> tuple[nn.Module, int, int]:
  if model == 'resnet50':
    import torchvision
    return torchvision.models.resnet50(), 224, 1000
  if model.startswith('cifar_resnet'):
    return cifar_resnet(int(model.removeprefix('cifar_resnet'))), 32, 10
  raise ValueError(f'unknown model {model!r}')


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', default='resnet50')
  p.add_argument('--mode', choices=['eager', 'compile'], default='eager')
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--warmup', type=int, default=10)
  p.add_argument('--windows', type=int, default=5)
  p.add_argument('--steps', type=int, default=20)
  a = p.parse_args()

  torch.backends.cudnn.benchmark = True
  dev = torch.device('cuda')
  net, size, classes = build(a.model)
  net = net.to(dev, memory_format=torch.channels_last)
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(a.batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
  y = torch.randint(0, classes, (a.batch,), device=dev)

  def step():
    with torch.autocast('cuda', dtype=torch.bfloat16):
      loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  if a.mode == 'compile':
    step = torch.compile(step)
  torch.cuda.synchronize()
  t = time.perf_counter()
  step()
  torch.cuda.synchronize()
  first_s = time.perf_counter() - t
  for _ in range(a.warmup):
    step()
  torch.cuda.synchronize()
  torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(a.windows):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(a.steps):
      loss = step()
    end.record()
    torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1000 / a.steps)
  s = statistics.median(times)
  print(json.dumps({
      'framework': 'torch', 'model': a.model, 'mode': a.mode, 'global_batch': a.batch,
      'images_per_sec': a.batch / s, 'step_ms': 1000 * s,
      'step_ms_windows': [round(1000 * t, 3) for t in times], 'compile_s': first_s,
      'peak_memory_gib': torch.cuda.max_memory_allocated() / 2**30,
      'final_loss': float(loss), 'torch': torch.__version__,
      'device_kind': torch.cuda.get_device_name(),
  }))


if __name__ == '__main__':
  main()
