"""The loader benchmark CLI runs end to end on a few generated JPEGs and prints its JSON line."""

import json

import pytest

from resnet_jax.data import benchmark


@pytest.mark.parametrize('decoder', ['host', 'nvimgcodec'])
def test_benchmark_cli_on_generated_jpegs(capsys, decoder):
  benchmark.main(['--generate', '8', '--workers', '0', '--batch-size', '4', '--steps', '2',
                  '--warmup', '1', '--image-size', '32', '--augment', 'inception_crop',
                  '--decoder', decoder])
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  assert result['images_per_sec'] > 0 and result['images_per_sec_one_core'] > 0
  assert result['num_images'] == 8 and result['mean_source_size'] == [500, 375]
  assert result['augment'] == 'inception_crop' and result['workers'] == 0
  assert list(result['stage_ms']) == ['read record', 'read header', 'plan crop', 'decode',
                                      'resize', 'flip, to array', 'stack batch']
  assert result['decoder'] == decoder
  if decoder == 'nvimgcodec':   # a whole batch in one call: all 4 generated JPEGs decoded
    assert result['batch_decode_ms'] > 0 and result['batch_decoded'] == 4
  else:
    assert result['batch_decode_ms'] is None
  assert all(ms > 0 for ms in result['stage_ms'].values())
  assert 'images/s' in lines[0] + lines[1]


def test_benchmark_cli_refuses_no_warmup(capsys):
  with pytest.raises(SystemExit):
    benchmark.main(['--generate', '8', '--warmup', '0'])
  assert '--warmup=0: at least 1' in capsys.readouterr().err
