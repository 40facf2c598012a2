"""Decoding of every image mode, the crop plans, crop-then-resize, CIFAR pad-crop, device_ops."""

import dataclasses
import io
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageFilter

from resnet_jax.config_base import base_config
from resnet_jax.data import device_ops, nvimgcodec_decode, transforms
from resnet_jax.data.decode import BadImageError, decode_array, load_pixels, open_image
from tests.data_builders import encode


def rgb_image(w=40, h=30, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize('mode, fmt', [('L', 'PNG'), ('1', 'PNG'), ('CMYK', 'JPEG'),
                                       ('RGBA', 'PNG'), ('LA', 'PNG'), ('RGB', 'JPEG'),
                                       ('RGB', 'BMP'), ('RGB', 'GIF'), ('RGB', 'TIFF')])
def test_every_mode_decodes_to_rgb_and_grey(mode, fmt):
  source = Image.fromarray(rgb_image()).convert(mode)
  data = encode(source, fmt)
  rgb = decode_array(data, 3, 'f')
  grey = decode_array(data, 1, 'f')
  assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
  assert grey.shape == (30, 40, 1) and grey.dtype == np.uint8
  # The pixels: the source's own (lossless formats; GIF's palette and JPEG lose some), alpha
  # dropped, grey as PIL's luma of them.
  stored = source if fmt in ('PNG', 'BMP', 'TIFF') else Image.open(io.BytesIO(data))
  expected = np.asarray(stored.convert('RGB')).astype(int)
  assert np.abs(rgb.astype(int) - expected).max() <= 1
  luma = np.asarray(Image.fromarray(expected.astype(np.uint8)).convert('L')).astype(int)
  assert np.abs(grey[..., 0].astype(int) - luma).max() <= 1


def test_palette_with_transparency_keeps_its_colours():
  palette_image = Image.new('P', (4, 2))
  palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
  palette_image.putdata([0, 1, 0, 1, 1, 0, 1, 0])
  data = encode(palette_image, 'PNG', transparency=1)
  rgb = decode_array(data, 3, 'f')
  np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
  np.testing.assert_array_equal(rgb[0, 1], [0, 0, 255])


def test_sixteen_bit_grey_is_rescaled_not_clipped():
  values = np.array([[0, 256, 32768, 65535]], np.uint16)
  data = encode(Image.fromarray(values), 'PNG')
  np.testing.assert_array_equal(decode_array(data, 1, 'f')[0, :, 0], [0, 1, 128, 255])


def test_grey_and_rgb_arrays_pass_through():
  grey = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
  assert decode_array(grey, 1, 'k') is grey
  np.testing.assert_array_equal(decode_array(grey, 3, 'k'), np.repeat(grey, 3, -1))


def test_corrupt_and_truncated_files_name_the_record():
  with pytest.raises(BadImageError, match='broken.jpg'):
    open_image(b'not an image at all', 'broken.jpg')
  jpeg = encode(Image.fromarray(rgb_image(200, 150)), 'JPEG')
  header = open_image(jpeg[:len(jpeg) // 2], 'half.jpg')   # the header is intact
  with pytest.raises(BadImageError, match='half.jpg.*cannot decode'):
    load_pixels(header, 3, 'half.jpg')


@pytest.mark.parametrize('mode', ['RGB', 'L'])
@pytest.mark.parametrize('draft_size', [None, (100, 75), (48, 40), (20, 20)])
def test_jpeg_pixels_equal_pils_decode_at_every_draft_scale(mode, draft_size):
  """The simplejpeg path gives PIL's own pixels and sizes (full scale and 1/2, 1/4, 1/8)."""
  big = Image.fromarray(rgb_image(64, 48)).resize((200, 150), Image.BICUBIC).convert(mode)
  data = encode(big, 'JPEG', quality=90)
  reference = Image.open(io.BytesIO(data))
  if draft_size:
    reference.draft(mode, draft_size)
  reference.load()
  ours = load_pixels(open_image(data, 'k'), 3 if mode == 'RGB' else 1, 'k', draft_size)
  assert ours.mode == mode and ours.size == reference.size
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))


def test_scale_augment_box_matches_the_paper():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, upper, right, lower = transforms.scale_augment_box(500, 375, rng, size=224,
                                                             scale_range=(256, 480))
    side = right - left
    assert lower - upper == pytest.approx(side)
    assert 0 <= left and right <= 500 and 0 <= upper and lower <= 375
    shorter = 224 * 375 / side   # the shorter side this crop corresponds to
    assert 256 - 1e-6 <= shorter <= 480 + 1e-6


def test_inception_crop_box_area_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, upper, right, lower = transforms.inception_crop_box(500, 375, rng)
    w, h = right - left, lower - upper
    assert 0 <= left and right <= 500 and 0 <= upper and lower <= 375
    assert 0.07 * 500 * 375 <= w * h <= 500 * 375
    assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_inception_crop_falls_back_to_a_centre_crop():
  rng = np.random.default_rng(0)
  box = transforms.inception_crop_box(1000, 10, rng, area_range=(0.99, 1.0))
  assert box == (493.5, 0, 506.5, 10)   # a 13x10 box: the widest allowed ratio, 4/3


def test_center_crop_box():
  assert transforms.center_crop_box(500, 400, size=224, resize=256) == pytest.approx(
      (250 - 175, 200 - 175, 250 + 175, 200 + 175))
  assert transforms.center_crop_box(32, 32, size=32) == (0, 0, 32, 32)
  assert transforms.center_crop_box(40, 30, size=16) == (12, 7, 28, 23)   # plain crop
  assert transforms.center_crop_box(32, 31, size=27) == (2, 2, 29, 29)   # of whole pixels
  image = rgb_image(32, 31)   # so eval cuts the pixels the device-resident centre crop cuts
  t = transforms.ImageTransform(augment='none', size=27, channels=3)
  np.testing.assert_array_equal(t.eval(encode(Image.fromarray(image), 'PNG'), 'k'),
                                image[2:29, 2:29])
  assert transforms.center_crop_box(10, 20, size=16) == (0, 5, 10, 15)   # scaled up to 16


def test_fast_decode_is_close_to_the_exact_decode_and_only_for_training_crops():
  photo = Image.fromarray(rgb_image(64, 48)).resize((320, 240), Image.BICUBIC)
  data = encode(photo.filter(ImageFilter.GaussianBlur(4)), 'JPEG', quality=90)
  exact = np.asarray(load_pixels(open_image(data, 'k'), 3, 'k'), int)
  fast = np.asarray(load_pixels(open_image(data, 'k'), 3, 'k', fast=True), int)
  assert fast.shape == exact.shape
  assert 0 < np.abs(fast - exact).mean() < 3   # another IDCT and upsampling: a few levels off
  exact_t = transforms.ImageTransform(augment='inception_crop', size=64, channels=3)
  t = dataclasses.replace(exact_t, fast_decode=True)
  np.testing.assert_array_equal(t.eval(data, 'k'), exact_t.eval(data, 'k'))
  crops = [x.train(data, 'k', np.random.default_rng(3)).astype(int) for x in (t, exact_t)]
  assert 0 < np.abs(crops[0] - crops[1]).mean() < 3


def test_crop_then_resize_equals_resize_then_crop():
  image = Image.fromarray(rgb_image(300, 200)).resize((300, 200), Image.BICUBIC)
  smooth = image.filter(ImageFilter.GaussianBlur(3))
  data = encode(smooth, 'PNG')
  ours = transforms.crop_resize(open_image(data, 'k'),
                                transforms.center_crop_box(300, 200, size=100, resize=150),
                                100, 3, 'k')
  resized = np.asarray(smooth.resize((225, 150), Image.BILINEAR))
  reference = resized[25:125, 62:162]
  assert ours.shape == (100, 100, 3)
  assert np.abs(ours.astype(int) - reference).mean() < 3


@pytest.mark.parametrize('mode', ['RGB', 'L'])
@pytest.mark.parametrize('box, size', [((10.5, 20.25, 310.0, 250.75), 224),   # shrink ~1.3
                                       ((100.0, 50.0, 150.0, 90.0), 224),     # enlarge ~4.5
                                       ((0.0, 0.0, 400.0, 300.0), 32),        # shrink 9-12
                                       ((399.0, 299.0, 400.0, 300.0), 3)])    # one pixel
def test_resize_box_matches_pil_bilinear(mode, box, size):
  image = Image.fromarray(rgb_image(400, 300)).convert(mode)
  ours = np.asarray(transforms.resize_box(image, box, size), int)
  reference = np.asarray(image.resize((size, size), Image.BILINEAR, box=box), int)
  assert ours.shape == reference.shape
  assert np.abs(ours - reference).max() <= 1


def test_large_jpeg_is_drafted_and_matches_the_full_decode():
  big = Image.fromarray(rgb_image(64, 48)).resize((1600, 1200), Image.BICUBIC)
  data = encode(big, 'JPEG', quality=95)
  header = open_image(data, 'big.jpg')
  box = (200.0, 100.0, 1400.0, 1100.0)   # 1200x1000 -> 100x100: decoded at 1/8 scale
  pixels, scaled_box = transforms.decode_for_box(header, box, 100, 3, 'big.jpg')
  assert pixels.size == (200, 150) and scaled_box == (25.0, 12.5, 175.0, 137.5)   # 1/8 scale
  drafted = transforms.crop_resize(open_image(data, 'big.jpg'), box, 100, 3, 'big.jpg')
  full = np.asarray(big.resize((100, 100), Image.BILINEAR, box=box))
  assert drafted.shape == (100, 100, 3)
  assert np.abs(drafted.astype(int) - full).mean() < 4


def test_pad_crop_shifts_content_and_pads_with_zeros():
  image = np.full((8, 8, 1), 200, np.uint8)
  rng = np.random.default_rng(1)
  crops = [transforms.pad_crop(image, rng, size=8, pad=2, key='k') for _ in range(50)]
  assert all(c.shape == (8, 8, 1) for c in crops)
  zeros = [int((c == 0).sum()) for c in crops]
  assert max(zeros) > 0 and len(set(zeros)) > 1
  for c in crops:   # a zero border and a 200 block: a shifted copy of the image
    rows, cols = np.nonzero(c[..., 0])
    assert (c[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 200).all()
  with pytest.raises(BadImageError, match=r'small\.png: a 8x8 image padded by 2 .* 13 crop'):
    transforms.pad_crop(image, rng, size=13, pad=2, key='small.png')


@pytest.mark.parametrize('augment', transforms.AUGMENTS)
def test_image_transform_outputs(augment):
  t = transforms.ImageTransform(augment=augment, size=16, channels=3, eval_resize=18,
                                scale_range=(18, 30), pad=2, vflip=True)
  data = encode(Image.fromarray(rgb_image(40, 30)), 'JPEG')
  rng = np.random.default_rng(0)
  for image in (t.train(data, 'k', rng), t.eval(data, 'k')):
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
  if augment == 'none':
    return
  # The same crop as without flips (the flips are drawn after it), mirrored each way at random.
  still = dataclasses.replace(t, hflip=False, vflip=False)
  seen = set()
  for seed in range(24):
    image, plain = (x.train(data, 'k', np.random.default_rng(seed)) for x in (t, still))
    views = {(h, v): plain[::-1 if v else 1, ::-1 if h else 1] for h in (0, 1) for v in (0, 1)}
    [flips] = [k for k, view in views.items() if np.array_equal(image, view)]
    seen.add(flips)
  assert seen == set(views)


def test_bad_augment_and_eval_resize_are_refused():
  with pytest.raises(ValueError, match='augment'):
    transforms.ImageTransform(augment='random', size=16, channels=3)
  with pytest.raises(ValueError, match='eval_resize'):
    transforms.ImageTransform(augment='none', size=16, channels=3, eval_resize=8)


def data_config(**kw):
  d = base_config().data
  d.update(kw)
  return d


def test_prepare_images_normalises_per_channel():
  images = jnp.full((2, 4, 4, 3), 255, jnp.uint8)
  out = device_ops.prepare_images(images, None, train=False, dtype=jnp.float32,
                                  data_config=data_config(mean=(0.5, 0.0, 1.0),
                                                          std=(0.5, 1.0, 2.0)))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 1.0, 0.0])
  plain = device_ops.prepare_images(images // 2, None, train=False, dtype=jnp.bfloat16,
                                    data_config=data_config(mean=(), std=()))
  assert plain.dtype == jnp.bfloat16 and float(plain.max()) == pytest.approx(127 / 255, 1e-2)
  single = device_ops.prepare_images(images, None, train=False, dtype=jnp.float32,
                                     data_config=data_config(mean=(0.5,), std=(0.25,)))
  np.testing.assert_allclose(single, 2.0)


def test_pca_lighting_adds_one_colour_shift_per_image():
  images = jnp.full((4, 3, 3, 3), 128, jnp.uint8)
  d = data_config(mean=(), std=(), pca_lighting=0.1)
  rng = jax.random.key(0)
  out = device_ops.prepare_images(images, rng, train=True, data_config=d, dtype=jnp.float32)
  shift = np.asarray(out) - 128 / 255
  assert np.abs(shift).max() > 1e-4
  np.testing.assert_allclose(shift, shift[:, :1, :1, :] * np.ones_like(shift), atol=1e-6)
  assert not np.allclose(shift[0, 0, 0], shift[1, 0, 0])
  eval_out = device_ops.prepare_images(images, None, train=False, data_config=d,
                                       dtype=jnp.float32)
  np.testing.assert_allclose(eval_out, 128 / 255, rtol=1e-6)
  # The shift lies in the span of the eigenvectors weighted by the eigenvalues (mostly the first).
  big = device_ops.pca_lighting(jnp.zeros((2000, 1, 1, 3)), rng, 1.0)[:, 0, 0]
  first = np.asarray(device_ops.IMAGENET_PCA_EIGVEC)[:, 0]
  assert abs(float(np.corrcoef(np.asarray(big) @ first, np.asarray(big)[:, 0])[0, 1])) > 0.9


def test_prepare_images_refuses_bad_settings():
  with pytest.raises(ValueError, match='mean'):
    device_ops.prepare_images(jnp.zeros((1, 2, 2, 3), jnp.uint8), None, train=False,
                              dtype=jnp.float32, data_config=data_config(mean=(0.1, 0.2)))
  with pytest.raises(ValueError, match='RGB'):
    device_ops.prepare_images(jnp.zeros((1, 2, 2, 1), jnp.uint8), jax.random.key(0),
                              train=True, dtype=jnp.float32,
                              data_config=data_config(pca_lighting=0.1))


def photo_jpeg(w: int = 320, h: int = 240) -> bytes:
  photo = Image.fromarray(rgb_image(w // 5, h // 5)).resize((w, h), Image.BICUBIC)
  return encode(photo.filter(ImageFilter.GaussianBlur(2)), 'JPEG', quality=90)


@pytest.mark.parametrize('augment', ['inception_crop', 'imagenet_scale'])
def test_nvimgcodec_decodes_the_crops_the_host_decoder_does(augment):
  """`data.decoder='nvimgcodec'` decodes only the region the resize reads (here on the CPU,
  with the same libjpeg-turbo): the same crops, train and eval, colour and grey JPEGs alike."""
  # Boxes under twice the output size: the host decoder decodes at full scale too.
  host = transforms.ImageTransform(augment=augment, size=160, channels=3, eval_resize=180,
                                   scale_range=(180, 400))
  nv = dataclasses.replace(host, decoder='nvimgcodec')
  grey = encode(Image.open(io.BytesIO(photo_jpeg())).convert('L'), 'JPEG', quality=90)
  for data in (photo_jpeg(), grey):
    for seed in range(8):
      crops = [t.train(data, 'k', np.random.default_rng(seed)) for t in (nv, host)]
      assert crops[0].shape == (160, 160, 3)
      np.testing.assert_array_equal(crops[0], crops[1])
    np.testing.assert_array_equal(nv.eval(data, 'k'), host.eval(data, 'k'))
    # ... and nvImageCodec decoded them, in one call (not the host decoder as a fallback).
    planned = [nv.plan_train(data, 'k', np.random.default_rng(s)) for s in range(8)]
    regions = nv.decode_regions([*planned, nv.plan_eval(data, 'k')])
    assert all(r is not None for r in regions)
    assert host.decode_regions(planned) == [None] * 8


def test_nvimgcodec_leaves_other_images_and_bad_jpegs_to_the_host_decoder():
  nv = transforms.ImageTransform(augment='inception_crop', size=16, channels=3,
                                 decoder='nvimgcodec')
  png = encode(Image.fromarray(rgb_image()), 'PNG')
  np.testing.assert_array_equal(nv.eval(png, 'k'), dataclasses.replace(nv, decoder='host')
                                .eval(png, 'k'))
  truncated = photo_jpeg()[:2000]
  assert nv.decode_regions([nv.plan_eval(png, 'k'), nv.plan_eval(truncated, 'k')]) == [None] * 2
  with pytest.raises(BadImageError, match='cut.jpg'):
    nv.train(truncated, 'cut.jpg', np.random.default_rng(0))


def test_decoder_options_are_checked():
  with pytest.raises(ValueError, match='data.decoder'):
    transforms.ImageTransform(augment='inception_crop', size=16, channels=3, decoder='nvjpeg')
  with pytest.raises(ValueError, match='data.fast_decode'):
    transforms.ImageTransform(augment='inception_crop', size=16, channels=3, fast_decode=True,
                              decoder='nvimgcodec')
  for bad, named in (('hw,nvdec', 'unknown nvdec'), (' , ', 'empty')):
    with pytest.raises(ValueError, match=f'data.nvimgcodec_backends=.*{named}'):
      transforms.ImageTransform(augment='inception_crop', size=16, channels=3,
                                decoder='nvimgcodec', nvimgcodec_backends=bad)
  assert nvimgcodec_decode.parse_backends(' cpu, cuda,cpu ') == ('cuda', 'cpu')
  config = base_config()
  config.data.nvimgcodec_backends = 'cuda'
  assert transforms.ImageTransform.from_config(config.data, 3).nvimgcodec_backends == 'cuda'


class FakeNvimgcodec:
  """Stands in for `nvidia.nvimgcodec`: records how decoders are made; decodes nothing (the
  host decoder then decodes every crop)."""

  class BackendKind:
    HW_GPU_ONLY, GPU_ONLY, CPU_ONLY = 'hw', 'cuda', 'cpu'

  class ColorSpec:
    SRGB = 'srgb'

  NVIMGCODEC_DEVICE_CPU_ONLY = -99

  def __init__(self):
    self.decoders = []
    fake = self

    class Decoder:
      def __init__(self, **kwargs):
        fake.decoders.append(kwargs)

      def decode(self, streams, params):
        return [None] * len(streams)

    class CodeStream:
      def __init__(self, data):
        pass

      def get_sub_code_stream(self, region):
        return region

    self.Decoder, self.CodeStream = Decoder, CodeStream
    self.Backend = lambda kind, load_hint=1.0: (kind, load_hint)
    self.Region = lambda *box: box
    self.DecodeParams = lambda **kwargs: kwargs


def test_the_decoder_is_made_with_the_backends_gpu_and_options(monkeypatch):
  """data.nvimgcodec_backends reaches nvImageCodec's decoder; the hardware engines share each
  batch with CUDA where both are listed; the worker's GPU and the options are passed."""
  import nvidia
  fake = FakeNvimgcodec()
  monkeypatch.setattr(nvidia, 'nvimgcodec', fake, raising=False)
  monkeypatch.setitem(sys.modules, 'nvidia.nvimgcodec', fake)
  monkeypatch.setattr(nvimgcodec_decode, '_local', threading.local())
  monkeypatch.setattr(nvimgcodec_decode, '_gpu', None)
  nvimgcodec_decode.use_gpu(3, 4, gpus=(5, 7))
  nv = transforms.ImageTransform(augment='inception_crop', size=32, channels=3,
                                 decoder='nvimgcodec', nvimgcodec_backends='cuda,hw')
  planned = nv.plan_eval(photo_jpeg(), 'k')
  assert nv.finish(planned).shape == (32, 32, 3)   # the host decoder took over
  for spec in ('hw', 'cpu'):
    dataclasses.replace(nv, nvimgcodec_backends=spec).decode_regions([planned])
  both, hw, cpu = fake.decoders
  assert both == dict(device_id=7, max_num_cpu_threads=1, options=nvimgcodec_decode.OPTIONS,
                      backends=[('hw', nvimgcodec_decode.HW_LOAD), ('cuda', 1.0)])
  assert hw['backends'] == [('hw', 1.0)] and hw['device_id'] == 7
  assert cpu == dict(device_id=FakeNvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                     backends=[('cpu', 1.0)])
  nv.decode_regions([planned])
  assert len(fake.decoders) == 3   # one decoder per thread and backend list, made once


def test_nvimgcodec_backends_narrow_the_decoders(monkeypatch):
  """data.nvimgcodec_backends: 'cpu' decodes on the CPU; a list without 'cpu' on a machine with
  no usable GPU (this one) is an error that says so, not a silent host fallback."""
  monkeypatch.setattr(nvimgcodec_decode, '_local', threading.local())   # fresh decoders
  nv = transforms.ImageTransform(augment='inception_crop', size=32, channels=3,
                                 decoder='nvimgcodec', nvimgcodec_backends='cpu')
  planned = nv.plan_eval(photo_jpeg(), 'k')
  assert nv.decode_regions([planned])[0] is not None
  if any(d.platform == 'gpu' for d in jax.devices()):
    pytest.skip('a GPU is visible: the GPU-only list would decode')
  with pytest.raises(RuntimeError, match='could not make a decoder.*hw,cuda: no usable GPU'):
    dataclasses.replace(nv, nvimgcodec_backends='hw,cuda').decode_regions([planned])


def test_grain_workers_are_dealt_out_over_the_gpus(monkeypatch):
  monkeypatch.setattr(nvimgcodec_decode, '_gpu', None)
  for index, expected in ((0, 4), (1, 6), (2, 4), (5, 6)):
    nvimgcodec_decode.use_gpu(index, 8, gpus=(4, 6))
    assert nvimgcodec_decode._gpu == expected
  nvimgcodec_decode.use_gpu(3, 8, gpus=())
  assert nvimgcodec_decode._gpu is None
