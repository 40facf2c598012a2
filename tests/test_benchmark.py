"""`python -m resnet_jax.benchmark`: the training step timed as the loop runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_jax.benchmark import run_benchmark
from resnet_jax.train.loop import train_and_evaluate
from tests.helpers import fake_config

REPO = Path(__file__).resolve().parents[1]


def test_figures_are_the_median_window_and_the_steps_ran(devices):
  config = fake_config()
  r = run_benchmark(config, pipeline=False, num_devices=0, warmup=1, windows=3, steps=2,
                    num_classes=10)
  assert len(r['step_ms_windows']) == 3 and r['devices'] == 8
  assert r['step_ms'] == pytest.approx(float(np.median(r['step_ms_windows'])), abs=1e-3)
  assert r['images_per_sec'] == pytest.approx(config.batch_size / r['step_ms'] * 1000, rel=1e-3)
  assert r['images_per_sec_per_device'] == pytest.approx(r['images_per_sec'] / 8)
  assert r['compile_s'] > 0 and np.isfinite(r['final_loss']) and not r['pipeline']
  one = run_benchmark(config, pipeline=True, num_devices=1, warmup=0, windows=1, steps=1,
                      num_classes=10)
  assert one['devices'] == 1 and one['pipeline']


def test_a_distilled_config_times_the_step_with_its_teacher(tmp_path, devices):
  train_and_evaluate(fake_config(num_steps=2), tmp_path / 'teacher')
  student = fake_config()
  plain = run_benchmark(student, pipeline=False, num_devices=0, warmup=1, windows=1, steps=2,
                        num_classes=10)
  student.distill.teacher = str(tmp_path / 'teacher')
  distilled = run_benchmark(student, pipeline=False, num_devices=0, warmup=1, windows=1,
                            steps=2, num_classes=10)
  assert abs(distilled['final_loss'] - plain['final_loss']) > 1e-3


def test_synthetic_images_have_the_datasets_channels(tmp_path, devices, caplog):
  """Grey idx data (Fashion-MNIST) is benchmarked on 1-channel images; a dataset that cannot be
  read (ImageNet not prepared here) falls back to data.fake_image_shape, saying so."""
  import logging
  from tests.helpers import write_idx_dataset
  config = fake_config()
  config.data.update(source='idx', name='fashion_mnist', image_size=16, device_resident=True,
                     data_dir=str(write_idx_dataset(tmp_path / 'data', 64, 64)))
  run = lambda: run_benchmark(config, pipeline=False, num_devices=1, warmup=0, windows=1,
                              steps=1, num_classes=10)
  assert run()['image_shape'] == [16, 16, 1]
  config.data.data_dir = str(tmp_path / 'missing')
  with caplog.at_level(logging.WARNING):
    assert run()['image_shape'] == [16, 16, 3]
  assert "fake_image_shape's 3 channels" in caplog.text and 'missing' in caplog.text


def test_the_command_prints_its_figures_and_one_json_line():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  r = subprocess.run([sys.executable, '-m', 'resnet_jax.benchmark', '--config=configs/fake.py',
                      '--steps=2', '--windows=1', '--warmup=0', '--num_classes=10'],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  figures = json.loads(lines[-1])
  assert figures['devices'] == 2 and figures['model'] == 'small_resnet'
  assert f"{figures['images_per_sec']:,.0f} images/s" in r.stdout
  assert f"jax {figures['jax']}" in r.stdout
