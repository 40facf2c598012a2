"""`python -m resnet_jax.predict` on a run trained for two steps on a generated image folder."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from resnet_jax import predict
from resnet_jax.config_base import base_config, saved_config
from resnet_jax.data.prepare import prepare
from resnet_jax.data.transforms import ImageTransform
from resnet_jax.train.loop import train_and_evaluate
from tests.data_builders import encode, folder_config, write_image_folder

CLASSES = {'good': 6, 'hole': 4}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(workdir, folder of images to predict with one corrupt file) after two training steps."""
  root = write_image_folder(tmp_path_factory.mktemp('images'), CLASSES, size=(40, 30))
  data = tmp_path_factory.mktemp('prepared')
  prepare(root, data, val_fraction=0.2, workers=0)
  config = folder_config(data, prefetch=0)
  config.model.update(name='small_resnet', width=8)
  config.update(num_steps=2, log_every_steps=1)
  workdir = tmp_path_factory.mktemp('run')
  train_and_evaluate(config, workdir)
  (root / 'train' / 'hole' / 'corrupt.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  return workdir, root / 'train'


def test_predicts_the_readable_files_and_reports_the_corrupt_one(run, capsys):
  workdir, images = run
  code = predict.main([f'--workdir={workdir}', str(images), '--json', '--good_class=good'])
  out, err = capsys.readouterr()
  lines = [json.loads(line) for line in out.splitlines()]
  assert code == 0
  assert len(lines) == sum(CLASSES.values()) + 1
  bad = [r for r in lines if 'error' in r]
  assert [r['file'] for r in bad] == [str(images / 'hole' / 'corrupt.jpg')]
  assert 'corrupt.jpg' in err and 'not a readable image' in err
  for r in lines:
    if 'error' in r:
      continue
    probs = [t['probability'] for t in r['top']]
    assert [t['class'] for t in r['top']] in (['good', 'hole'], ['hole', 'good'])
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    assert r['flagged'] == (r['top'][0]['class'] != 'good')
  flagged = sum(r.get('flagged', False) for r in lines)
  assert f'{len(lines) - 1} of {len(lines)} images predicted, {flagged} flagged' in err


def test_text_output_top_k_and_flags(run, capsys):
  workdir, images = run
  predictor = predict.Predictor(workdir)
  files = predict.find_images([images / 'good'])
  results = list(predict.predict(predictor, files, top_k=1, good_class='hole'))
  assert len(results) == CLASSES['good'] and all(len(r['top']) == 1 for r in results)
  assert all(r['flagged'] == (r['top'][0]['class'] == 'good') for r in results)
  line = predict.format_text(dict(results[0], flagged=True))
  assert line.startswith(f"{files[0]}: {results[0]['top'][0]['class']} ")
  assert line.endswith('FLAGGED')


def test_each_class_gets_the_models_probability_for_it(run):
  """The probabilities printed for a class name are the model's softmax at that class's index
  (the dataset's sorted class folders), computed here without the predictor's batching."""
  import jax
  import jax.numpy as jnp
  from resnet_jax.data.device_ops import prepare_images
  from resnet_jax.train.restore import restore_trained
  workdir, images = run
  predictor = predict.Predictor(workdir)
  files = predict.find_images([images / 'good', images / 'hole'])[:5]
  results = list(predict.predict(predictor, files, top_k=2))
  trained = restore_trained(workdir)
  crops = jnp.asarray(np.stack([predictor.preprocess(f) for f in files]))
  logits = trained.model.apply(trained.variables, prepare_images(
      crops, None, train=False, data_config=trained.config.data, dtype=jnp.float32), train=False)
  for r, p in zip(results, np.asarray(jax.nn.softmax(logits)), strict=True):
    assert {t['class']: t['probability'] for t in r['top']} == pytest.approx(
        dict(zip(sorted(CLASSES), p)), abs=1e-5)


def test_unknown_good_class_lists_the_classes(run):
  workdir, images = run
  predictor = predict.Predictor(workdir)
  with pytest.raises(ValueError, match="'ok' is not a class.*good, hole"):
    list(predict.predict(predictor, [images / 'good' / '0.jpg'], top_k=5, good_class='ok'))


def test_nothing_predicted_exits_non_zero(run, capsys):
  workdir, images = run
  assert predict.main([f'--workdir={workdir}', str(images / 'hole' / 'corrupt.jpg')]) == 1
  assert 'corrupt.jpg' in capsys.readouterr().err


def test_a_photo_larger_than_the_crop_is_seen_whole_where_eval_does_not_resize():
  d = base_config().data
  d.update(image_size=16, eval_resize=0)
  rng = np.random.default_rng(0)
  buffers = []
  for size in ((16, 16), (64, 48)):
    buffers.append(encode(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3),
                                                       dtype=np.uint8)), 'PNG'))
  ours, evals = predict.predict_transform(d, 3), ImageTransform.from_config(d, 3)
  np.testing.assert_array_equal(ours.eval(buffers[0], 'a'), evals.eval(buffers[0], 'a'))
  whole = ImageTransform('none', 16, 3, eval_resize=16).eval(buffers[1], 'b')   # 48 -> 16
  np.testing.assert_array_equal(ours.eval(buffers[1], 'b'), whole)
  assert not np.array_equal(evals.eval(buffers[1], 'b'), whole)   # eval: the central patch


def test_a_run_saved_by_another_version_still_predicts(run, tmp_path, caplog):
  """config.json of a run from before a field was added (here data.nvimgcodec_backends) or
  after one was removed: the added field takes its default, the removed one is logged. A length
  in steps and in epochs (where steps ruled, before one of them had to be 0) reads as steps."""
  import logging
  import shutil
  workdir, images = run
  old = tmp_path / 'old_run'
  shutil.copytree(workdir, old)
  saved = json.loads((old / 'config.json').read_text())
  del saved['data']['nvimgcodec_backends']
  saved['data']['retired_option'] = 3
  saved['num_epochs'] = 1.0
  (old / 'config.json').write_text(json.dumps(saved))
  with caplog.at_level(logging.WARNING):
    predictor = predict.Predictor(old)
  assert predictor.config.data.nvimgcodec_backends == base_config().data.nvimgcodec_backends
  assert predictor.config.data.scale_range == tuple(saved['data']['scale_range'])
  assert 'data.retired_option' in caplog.text
  assert (predictor.config.num_steps, predictor.config.num_epochs) == (2, 0)
  files = predict.find_images([images / 'good'])
  assert len(list(predict.predict(predictor, files, top_k=1, good_class='good'))) == CLASSES['good']


def test_class_names_come_from_the_run_where_the_dataset_is_not_found(run, tmp_path, caplog):
  """A relative data.data_dir seen from another directory (or a dataset moved away): the names
  the run recorded in run_info.json; a run without them (an older version) falls back to the
  class indices, with a warning."""
  import logging
  import shutil
  workdir, _ = run
  moved = tmp_path / 'moved_run'
  shutil.copytree(workdir, moved)
  saved = json.loads((moved / 'config.json').read_text())
  saved['data']['data_dir'] = 'data/fabric'
  (moved / 'config.json').write_text(json.dumps(saved))
  assert json.loads((moved / 'run_info.json').read_text())['class_names'] == ['good', 'hole']
  assert predict.Predictor(moved).class_names == ('good', 'hole')
  info = json.loads((moved / 'run_info.json').read_text())
  del info['class_names']
  (moved / 'run_info.json').write_text(json.dumps(info))
  with caplog.at_level(logging.WARNING):
    assert predict.Predictor(moved).class_names == ('0', '1')
  assert 'class names unavailable' in caplog.text and 'data/fabric' in caplog.text


@pytest.mark.parametrize('path, value, message', [
    (('data', 'scale_range'), 5, 'data.scale_range is 5, which does not fit the schema (tuple)'),
    (('optimizer',), 3, 'optimizer is 3, which does not fit the schema (ConfigDict)'),
    (('num_steps',), 'many', "num_steps is 'many'"),
])
def test_a_saved_config_value_of_the_wrong_type_is_named(path, value, message):
  saved = json.loads(json.dumps(base_config().to_dict()))
  section = saved
  for key in path[:-1]:
    section = section[key]
  section[path[-1]] = value
  with pytest.raises(ValueError, match=r'run/config\.json: ' + re.escape(message)):
    saved_config(saved, source='run/config.json')


def test_a_corrupt_config_json_or_a_run_without_a_checkpoint_is_named(tmp_path, devices):
  from resnet_jax.evaluate import evaluate_workdir
  from resnet_jax.train.restore import restore_trained
  with pytest.raises(FileNotFoundError, match='nowhere does not exist'):
    evaluate_workdir(base_config(), tmp_path / 'nowhere')
  (tmp_path / 'config.json').write_text('{broken')
  with pytest.raises(ValueError, match=re.escape(f'{tmp_path / "config.json"} is not valid JSON')):
    restore_trained(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps(base_config().to_dict()))
  for read in (lambda: restore_trained(tmp_path), lambda: evaluate_workdir(base_config(), tmp_path)):
    with pytest.raises(FileNotFoundError, match=f'{tmp_path / "checkpoints"} not found'):
      read()
  assert not (tmp_path / 'checkpoints').exists()   # not made by reading
